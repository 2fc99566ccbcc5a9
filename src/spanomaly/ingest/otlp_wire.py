"""Vectorised decoding of OTLP protobuf spans: the wire format read with numpy, not per span.

upb parses the outer layers of an ExportTraceServiceRequest with a private schema in which
``ScopeSpans.spans`` is ``repeated bytes``: it splits the request into raw span encodings
(fast, in C) without building a message per span. Batches of raw spans are joined into one
buffer and read field by field with numpy (`scan`: step k reads the k-th field of every
span at once; the usual head of a span is read in one go), then one level down for the
status and the attributes (KeyValue, AnyValue). Text columns are cut out of the buffer by
one Arrow `filter` over offset pairs, ids become hex through a lookup table, and the
attributes JSON is written into the buffer itself (see `_attributes_json`). Spans holding
rare shapes (doubles, arrays, maps, bytes, text needing JSON escapes, repeated keys) get
their attributes JSON from orjson, span by span; a malformed span is rejected alone.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from spanomaly.ingest.base import Chunk, Reject
from spanomaly.ingest.otlp_common import (
    HTTP_METHOD_KEYS,
    HTTP_ROUTE_KEYS,
    HTTP_STATUS_KEYS,
    HTTP_URL_KEYS,
    PEER_SERVICE_KEYS,
    ResourceInfo,
    SpanRows,
    anyvalue_py,
    attrs_py,
    dumps,
    http_status,
    kind_name,
    resource_info,
    span_attribute_columns,
    status_name,
)
from spanomaly.ingest.validate import split_valid
from spanomaly.schema import KIND_VALUES, SPANS, STATUS_VALUES

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# The private schema: OTLP traces with spans left as raw bytes.


def _build_raw_request_class() -> type[Message]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="spanomaly/otlp_raw_traces.proto",
        package="spanomaly.otlpraw",
        syntax="proto3",
        dependency=["opentelemetry/proto/resource/v1/resource.proto"],
    )
    f = descriptor_pb2.FieldDescriptorProto
    opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED

    def message(name: str, fields: list[tuple[int, str, int, int, str]]) -> None:
        msg = fdp.message_type.add(name=name)
        for number, fname, ftype, label, type_name in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name

    message(
        "ScopeSpans",
        [(1, "scope", f.TYPE_BYTES, opt, ""), (2, "spans", f.TYPE_BYTES, rep, "")],
    )
    message(
        "ResourceSpans",
        [
            (1, "resource", f.TYPE_MESSAGE, opt, ".opentelemetry.proto.resource.v1.Resource"),
            (2, "scope_spans", f.TYPE_MESSAGE, rep, ".spanomaly.otlpraw.ScopeSpans"),
        ],
    )
    message(
        "TracesRequest",
        [(1, "resource_spans", f.TYPE_MESSAGE, rep, ".spanomaly.otlpraw.ResourceSpans")],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(common_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(resource_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(fdp.SerializeToString())
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("spanomaly.otlpraw.TracesRequest")
    )


RawTracesRequest = _build_raw_request_class()

# ---------------------------------------------------------------------------------------
# Reading many messages at once.

_PAD = bytes(32)  # lets reads run past a message's end (varints, clamped positions)
_ONE = np.int64(1)


def _tag_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per one-byte tag: is LEN, is varint or LEN, is varint, fixed payload size (-1 bad)."""
    tags = np.arange(256)
    wire, field = tags & 7, tags >> 3
    valid = field > 0
    is_len = valid & (wire == 2)
    is_var = valid & (wire == 0)
    fixed = np.where(wire == 1, 8, np.where(wire == 5, 4, np.where(wire <= 2, 0, -1)))
    fixed = np.where(valid, fixed, -1).astype(np.int64)
    return is_len.astype(np.int64), (is_len | is_var).astype(np.int64), is_var, fixed


_IS_LEN, _IS_VL, _IS_VAR, _FIXED = _tag_tables()


def _varint(buf: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray | np.int64]:
    """The varints starting at positions p: (values as uint64, encoded lengths)."""
    b = buf[p]
    if p.size == 0 or b.max() < 0x80:
        return b.astype(np.uint64), _ONE
    val = (b & 0x7F).astype(np.uint64)
    k = np.ones(p.size, np.int64)
    idx = np.flatnonzero(b & 0x80)
    shift = 7
    while idx.size:
        if shift > 63:  # more than 10 bytes: malformed; make the field overrun its message
            k[idx] = 1 << 40
            break
        bb = buf[p[idx] + k[idx]]
        val[idx] |= (bb & 0x7F).astype(np.uint64) << np.uint64(shift)
        k[idx] += 1
        idx = idx[bb >= 0x80]
        shift += 7
    return val, k


class Layout:
    """Which fields of a message type to keep: tag -> slot; one repeated field may be listed."""

    def __init__(self, slots: dict[int, int], repeated: int = 0) -> None:
        self.slot = np.zeros(256, np.int64)
        for tag, slot in slots.items():
            self.slot[tag] = slot
        self.nslots = max([*slots.values(), repeated]) + 1
        self.repeated = repeated
        if repeated:
            self.slot[[t for t, s in slots.items() if s == repeated]] = repeated


class Scan(NamedTuple):
    """Fields found in a set of messages (the last occurrence of each kept field wins)."""

    pos: np.ndarray  # (slots, n) payload start; the message start where the field is absent
    val: np.ndarray  # (slots, n) varint value, or payload size; 0 where absent
    rep_msg: np.ndarray  # occurrences of the repeated field, in buffer order: message,
    rep_pos: np.ndarray  # payload start
    rep_size: np.ndarray  # and payload size
    bad: np.ndarray  # per message: malformed (overrun, group or unknown wire type)


def scan(
    buf: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    layout: Layout,
    resume: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Scan:
    """Read the messages buf[starts[i]:ends[i]] field by field, all messages at each step.

    Step k reads the k-th field of every message still unread. buf must be padded with at
    least 16 bytes after the last message. resume: (where to go on reading, pos, val) when
    the first fields have been read already (pos and val as Scan has them).
    """
    n = starts.size
    if resume is None:
        pos = np.empty((layout.nslots, n), np.int64)
        pos[:] = starts
        val = np.zeros((layout.nslots, n), np.int64)
        begin = starts
    else:
        begin, pos, val = resume
    posf, valf = pos.reshape(-1), val.reshape(-1)
    bad = np.zeros(n, bool)
    reps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    idx = np.flatnonzero(begin < ends)
    p, e = begin[idx], ends[idx]
    while idx.size:
        b = buf[p]
        if b.max() < 0x80:
            tag: np.ndarray = b
            p = p + 1
        else:
            t, k = _varint(buf, p)
            p = p + k
            tag = np.where(t < 256, t, 248 | (t & np.uint64(7))).astype(np.int64)
        is_vl = _IS_VL[tag]
        v, k2 = _varint_where(buf, p, is_vl)
        size = np.where(_IS_LEN[tag].astype(bool), v, _FIXED[tag])
        payload = p + k2 * is_vl
        nxt = payload + size
        stored = np.where(_IS_VAR[tag], v, size)
        ok = (size >= 0) & (nxt <= e)
        slot = layout.slot[tag]
        if not ok.all():
            bad[idx[~ok]] = True
            slot = np.where(ok, slot, 0)
        flat = slot * n + idx
        posf[flat] = payload
        valf[flat] = stored
        if layout.repeated:
            r = np.flatnonzero(slot == layout.repeated)
            if r.size:
                reps.append((idx[r], payload[r], size[r]))
        more = ok & (nxt < e)
        if more.all():
            p = nxt
        else:
            idx, p, e = idx[more], nxt[more], e[more]
    if reps:
        rep_msg, rep_pos, rep_size = (np.concatenate(c) for c in zip(*reps, strict=True))
        order = np.argsort(rep_pos, kind="stable")
        rep_msg, rep_pos, rep_size = rep_msg[order], rep_pos[order], rep_size[order]
    else:
        rep_msg = rep_pos = rep_size = np.zeros(0, np.int64)
    return Scan(pos, val, rep_msg, rep_pos, rep_size, bad)


def _varint_where(
    buf: np.ndarray, p: np.ndarray, wanted: np.ndarray
) -> tuple[np.ndarray, np.ndarray | np.int64]:
    """Varints at p where wanted (others: the byte at p, junk): values as int64, lengths."""
    b = buf[p]
    v = b.astype(np.int64)
    multi = np.flatnonzero((b >= 0x80) & wanted.astype(bool))
    if multi.size == 0:
        return v, _ONE
    vv, kk = _varint(buf, p[multi])
    v[multi] = vv.view(np.int64)
    k = np.ones(p.size, np.int64)
    k[multi] = kk
    return v, k


def _fixed64(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Little-endian 64-bit integers at the given positions (any alignment), as int64."""
    words = np.ndarray((buf.size - 7,), "<i8", buffer=buf.data, strides=(1,))
    return words[pos]


def _rows(buf: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """The width bytes at each position, as a (len(pos), width) array."""
    rows = np.lib.stride_tricks.as_strided(buf, (buf.size - width + 1, width), (1, 1))
    return rows[pos]


# ---------------------------------------------------------------------------------------
# Columns out of the buffer.

_HEX = np.array(
    [ord("0123456789abcdef"[b >> 4]) | (ord("0123456789abcdef"[b & 15]) << 8) for b in range(256)],
    np.uint16,
)


def _cut(pbuf: pa.Buffer, starts: np.ndarray, sizes: np.ndarray) -> pa.Array:
    """The byte ranges as a compact large_binary array (ranges ascending, not overlapping)."""
    n = starts.size
    if n == 0:
        return pa.array([], pa.large_binary())
    offs = np.empty(2 * n, np.int64)
    offs[0::2] = starts
    offs[1::2] = starts + sizes
    both = pa.Array.from_buffers(pa.large_binary(), 2 * n - 1, [None, pa.py_buffer(offs), pbuf])
    keep = np.zeros(2 * n - 1, bool)
    keep[0::2] = True
    return both.filter(pa.array(keep))


_STRING = pa.string()


def _to_text(raw: pa.Array, typ: pa.DataType = _STRING) -> pa.Array:
    """Binary as text; invalid UTF-8 is replaced (U+FFFD), value by value, only if present."""
    try:
        return raw.cast(typ)
    except pa.ArrowInvalid:
        return pa.array(
            [None if b is None else b.decode("utf-8", "replace") for b in raw.to_pylist()], typ
        )


_OFFSET_TYPES = {pa.string(): np.int32, pa.large_string(): np.int64}


def _sparse(n: int, rows: np.ndarray, values: pa.Array) -> pa.Array:
    """An array of length n holding values at rows (ascending) and nulls elsewhere."""
    if rows.size == n:
        return values
    offset_type = _OFFSET_TYPES.get(values.type)
    if offset_type is not None and values.null_count == 0:
        # text: the same data buffer under new offsets (empty at the null rows), no copy
        itemsize = np.dtype(offset_type).itemsize
        old = np.frombuffer(
            values.buffers()[1], offset_type, count=len(values) + 1, offset=itemsize * values.offset
        )
        lengths = np.zeros(n, offset_type)
        lengths[rows] = np.diff(old)
        offsets = np.empty(n + 1, offset_type)
        offsets[0] = old[0]
        np.cumsum(lengths, out=offsets[1:])
        offsets[1:] += old[0]
        valid = np.zeros(n, bool)
        valid[rows] = True
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
        data = values.buffers()[2] or pa.py_buffer(b"")
        return pa.Array.from_buffers(
            values.type, n, [bitmap, pa.py_buffer(offsets), data], null_count=n - rows.size
        )
    index = np.full(n, -1, np.int64)
    index[rows] = np.arange(rows.size)
    return values.take(pa.array(index, mask=index < 0))


def _text_column(
    pbuf: pa.Buffer, starts: np.ndarray, sizes: np.ndarray, present: np.ndarray | None = None
) -> pa.Array:
    """UTF-8 text of the byte ranges, null where not present."""
    n = starts.size
    if present is None:
        return _to_text(_cut(pbuf, starts, sizes))
    rows = np.flatnonzero(present)
    if rows.size == 0:
        return pa.nulls(n, pa.string())
    return _sparse(n, rows, _to_text(_cut(pbuf, starts[rows], sizes[rows])))


def _all_or_mask(present: np.ndarray) -> np.ndarray | None:
    """None where every row is present (the cheaper path of _text_column), else the mask."""
    return None if present.all() else present


def _hex_column(
    buf: np.ndarray,
    pbuf: pa.Buffer,
    starts: np.ndarray,
    sizes: np.ndarray,
    present: np.ndarray | None = None,
) -> pa.Array:
    """Lower-case hex of the byte ranges, null where not present."""
    n = starts.size
    if present is not None:
        rows = np.flatnonzero(present)
        if rows.size < n:
            if rows.size == 0:
                return pa.nulls(n, pa.string())
            return _sparse(n, rows, _hex_column(buf, pbuf, starts[rows], sizes[rows]))
    if n == 0:
        return pa.array([], pa.string())
    width = int(sizes[0])
    if width == 0 and not sizes.any():
        return pa.array([""] * n, pa.string())
    if (sizes == width).all():  # the usual case: one gather, no offsets to compute
        data = _rows(buf, starts, width).reshape(-1)
        offsets = np.arange(0, 2 * width * n + 1, 2 * width, dtype=np.int32)
    else:
        raw = _cut(pbuf, starts, sizes)
        total = int(sizes.sum())
        data = np.frombuffer(raw.buffers()[2], np.uint8, count=total) if total else buf[:0]
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(sizes * 2, out=offsets[1:])
    return pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(_HEX[data])]
    )


_KINDS = pa.array(KIND_VALUES, pa.string())
_STATUSES = pa.array(STATUS_VALUES, pa.string())
_COLUMN_KEYS = {
    "http_method": HTTP_METHOD_KEYS,
    "http_route": HTTP_ROUTE_KEYS,
    "http_url": HTTP_URL_KEYS,
    "peer_service": PEER_SERVICE_KEYS,
}

# ---------------------------------------------------------------------------------------
# Attributes: KeyValue { string key = 1; AnyValue value = 2; }
# AnyValue { oneof: string 1, bool 2, int64 3, double 4, array 5, kvlist 6, bytes 7 }

_NONE, _STR, _BOOL, _INT, _DOUBLE = 0, 1, 2, 3, 4
_KV_LAYOUT = Layout({0x0A: 1, 0x12: 2})
_AV_LAYOUT = Layout({0x0A: 1, 0x10: 2, 0x18: 3, 0x21: 4, 0x2A: 5, 0x32: 6, 0x3A: 7})
_AV_TAGS = np.zeros(256, np.int64)  # one-byte AnyValue tag -> type (0: not an AnyValue tag)
_AV_TAGS[[0x0A, 0x10, 0x18, 0x21, 0x2A, 0x32, 0x3A]] = [1, 2, 3, 4, 5, 6, 7]


@dataclass
class _KVs:
    """The attributes (KeyValue) of a batch, in buffer order."""

    span: np.ndarray  # span (row) each belongs to
    start: np.ndarray  # payload start of the KeyValue
    ks: np.ndarray  # key text start, size, whether a key field is present
    klen: np.ndarray
    has_key: np.ndarray
    typ: np.ndarray  # AnyValue type (_NONE, _STR, ... 7)
    vs: np.ndarray  # string value start and size (_STR)
    vlen: np.ndarray
    ival: np.ndarray  # int64 value (_INT, _BOOL)
    av: np.ndarray  # the whole AnyValue encoding (for the rare types)
    avlen: np.ndarray

    def key(self, buf: np.ndarray, j: int) -> str:
        """The key of one KeyValue as text."""
        return bytes(buf[self.ks[j] : self.ks[j] + self.klen[j]]).decode("utf-8", "replace")

    def value(self, buf: np.ndarray, j: int) -> Any:
        """The value of one KeyValue as a plain Python value (rare types parsed by upb)."""
        typ = self.typ[j]
        if typ == _STR:
            return bytes(buf[self.vs[j] : self.vs[j] + self.vlen[j]]).decode("utf-8", "replace")
        if typ == _INT:
            return int(self.ival[j])
        if typ == _BOOL:
            return bool(self.ival[j])
        if typ == _NONE:
            return None
        raw = bytes(buf[self.av[j] : self.av[j] + self.avlen[j]])
        try:
            return anyvalue_py(common_pb2.AnyValue.FromString(raw))
        except (DecodeError, RecursionError) as exc:  # nested past upb's depth limit, say
            # the slow path parses each span alone and rejects the one that fails
            raise _Unusual(f"an attribute value upb cannot parse: {exc}") from exc


def _decode_kvs(
    buf: np.ndarray, span: np.ndarray, a: np.ndarray, size: np.ndarray, bad: np.ndarray
) -> _KVs:
    """Keys and values of KeyValue messages at a (payload starts); bad spans marked."""
    m = a.size
    ae = a + size
    last = buf.size - 16
    # the usual encoding: 0a KL key 12 VL [AnyValue: tag value]
    klen, kk = _varint(buf, np.minimum(a + 1, last))
    ks = a + 1 + kk
    klen = klen.astype(np.int64)
    ke = ks + klen
    kec = np.minimum(ke, last)
    vl, vk = _varint(buf, np.minimum(kec + 1, last))
    av = ke + 1 + vk
    avlen = vl.astype(np.int64)
    ok = (buf[np.minimum(a, last)] == 0x0A) & (buf[kec] == 0x12) & (av + avlen == ae)
    ok &= (klen >= 0) & (avlen >= 0) & (ke < ae)
    avc = np.minimum(av, last)
    typ = _AV_TAGS[buf[avc]]
    typ[avlen == 0] = _NONE
    sv, sk = _varint(buf, np.minimum(avc + 1, last))  # string length, or the int/bool value
    svi = sv.view(np.int64)
    vs = av + 1 + sk
    is_len = (typ == _STR) | (typ >= 5)
    body_end = np.where(is_len, vs + svi, np.where(typ == _DOUBLE, av + 9, vs))
    ok &= (typ > 0) & (body_end == ae) & (~is_len | (svi >= 0)) | (avlen == 0)
    vlen = np.where(typ == _STR, svi, 0)
    vs = np.where(typ == _STR, vs, a)
    ival = np.where((typ == _INT) | (typ == _BOOL), svi, 0)
    kvs = _KVs(span, a, ks, klen, np.ones(m, bool), typ, vs, vlen, ival, av, avlen)
    other = np.flatnonzero(~ok)
    if other.size:  # anything else: read field by field
        _decode_kvs_slowly(buf, kvs, other, ae[other], bad)
    return kvs


def _decode_kvs_slowly(
    buf: np.ndarray, kvs: _KVs, rows: np.ndarray, ends: np.ndarray, bad: np.ndarray
) -> None:
    """Fill in kvs at rows, reading those KeyValues (and their values) field by field."""
    a = kvs.start[rows]
    kv = scan(buf, a, ends, _KV_LAYOUT)
    bad[kvs.span[rows[kv.bad]]] = True
    kvs.ks[rows] = kv.pos[1]
    kvs.klen[rows] = kv.val[1]
    kvs.has_key[rows] = kv.pos[1] > a
    kvs.av[rows] = kv.pos[2]
    kvs.avlen[rows] = kv.val[2]
    val = scan(buf, kv.pos[2], kv.pos[2] + kv.val[2], _AV_LAYOUT)
    bad[kvs.span[rows[val.bad]]] = True
    present = val.pos > kv.pos[2]  # (slots, k): the field was read (payload after the tag)
    present[0] = False
    last = np.argmax(np.where(present, val.pos, -1), axis=0)  # a oneof: the last one wins
    t = np.where(present.any(axis=0), last, _NONE)
    kvs.typ[rows] = t
    kvs.vs[rows] = np.where(t == _STR, val.pos[_STR], a)
    kvs.vlen[rows] = np.where(t == _STR, val.val[_STR], 0)
    kvs.ival[rows] = np.where(t == _INT, val.val[_INT], np.where(t == _BOOL, val.val[_BOOL], 0))


_QUOTE, _COLON, _COMMA, _LBRACE, _RBRACE = (ord(c) for c in '":,{}')
_EMPTY_OBJECT = pa.scalar("{}", pa.large_string())
_POW10 = np.array([10**k for k in range(1, 20)], np.uint64)
_WORDS = {  # AnyValue type -> (bytes of the word, for value 0 and value 1)
    _BOOL: (b"false", b"true"),
    _NONE: (b"null", b"null"),
}


def _write_words(buf: np.ndarray, pos: np.ndarray, values: np.ndarray, typ: int) -> np.ndarray:
    """Write false/true (or null) at pos; returns the lengths written."""
    words = [np.frombuffer(w, np.uint8) for w in _WORDS[typ]]
    lengths = np.where(values != 0, len(words[1]), len(words[0]))
    for which, word in enumerate(words):
        at = pos[(values != 0) == bool(which)]
        for i, ch in enumerate(word):
            buf[at + i] = ch
    return lengths


def _decimal(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(magnitude as uint64, number of digits, is negative) of int64 values."""
    neg = values < 0
    u = values.view(np.uint64)
    magnitude = np.where(neg, ~u + np.uint64(1), u)
    return magnitude, np.searchsorted(_POW10, magnitude, side="right") + 1, neg


def _write_ints(
    buf: np.ndarray, pos: np.ndarray, magnitude: np.ndarray, digits: np.ndarray, neg: np.ndarray
) -> None:
    """Write the decimal text of integers (from _decimal) at pos."""
    buf[pos[neg]] = ord("-")
    units = pos + neg + digits - 1  # where the units digit goes
    spare = buf.size - 1  # a padding byte: where digits beyond a number's length go
    rest = magnitude.copy()
    ten = np.uint64(10)
    for i in range(int(digits.max(initial=0))):
        buf[np.where(digits > i, units - i, spare)] = (rest % ten).astype(np.uint8) + ord("0")
        rest //= ten
    buf[spare] = 0


def _attributes_json(
    buf: np.ndarray,
    pbuf: pa.Buffer,
    kv: _KVs,
    n: int,
    offsets: np.ndarray,
    dup_spans: np.ndarray,
) -> pa.Array:
    """The JSON object of each span's attributes, as text.

    The buffer is edited in place (everything else has been read from it): the framing
    bytes around a key become JSON punctuation, ``0a 05 k e y 12 07`` -> ``{ " k e y " :``,
    those around a string value its quotes and the comma (or closing brace) after it, and
    an integer's varint bytes (plus the framing after them) its decimal digits. One cut
    then yields two pieces per attribute, ``"key":`` and ``"value",``; joining each span's
    pieces gives its JSON object. A span holding what does not fit this way (doubles,
    arrays, maps, bytes, text needing JSON escapes, a repeated key, a large number) is
    written by orjson instead, from values read before the edit.
    """
    m = kv.span.size
    if m == 0:
        return pa.array(["{}"] * n, pa.string())
    typ = kv.typ
    first = np.ones(m, bool)
    first[1:] = kv.span[1:] != kv.span[:-1]
    last = np.ones(m, bool)
    last[:-1] = kv.span[1:] != kv.span[:-1]
    ks, ke = kv.ks, kv.ks + kv.klen
    is_str, is_int = typ == _STR, typ == _INT
    simple = (typ <= _INT) & kv.has_key & (~is_str | (kv.vs >= ke + 3))
    ints = np.flatnonzero(is_int)
    magnitude, digits, negative = _decimal(kv.ival[ints])
    # how long the text of a number, a boolean or null will be
    text = np.where(typ == _BOOL, 5 - (kv.ival != 0), 4)
    text[ints] = digits + negative
    a_start = ks - 1 - first
    b_start = np.where(is_str, kv.vs - 1, ke + 2)
    b_end = np.where(is_str, kv.vs + kv.vlen + 2, ke + 3 + text)
    next_start = np.empty(m, np.int64)
    next_start[:-1] = a_start[1:]
    next_start[-1] = buf.size
    simple &= b_end <= next_start
    # spans written by orjson: read their values now, before the buffer changes
    by_python = np.zeros(n, bool)
    by_python[kv.span[~simple]] = True
    by_python[dup_spans] = True
    python_rows = np.flatnonzero(by_python)
    python_json = _spans_json_slowly(buf, kv, offsets, python_rows)
    write = simple & ~by_python[kv.span]
    w: np.ndarray | slice = slice(None) if python_rows.size == 0 else np.flatnonzero(write)
    # the punctuation, written over bytes already read
    buf[ks[first & write] - 2] = _LBRACE
    buf[ks[w] - 1] = _QUOTE
    buf[ke[w]] = _QUOTE
    buf[ke[w] + 1] = _COLON
    ws = np.flatnonzero(is_str & write)
    buf[kv.vs[ws] - 1] = _QUOTE
    buf[kv.vs[ws] + kv.vlen[ws]] = _QUOTE
    int_w = write[ints]
    wi = ints[int_w]
    _write_ints(buf, ke[wi] + 2, magnitude[int_w], digits[int_w], negative[int_w])
    for t in (_BOOL, _NONE):
        wt = np.flatnonzero((typ == t) & write)
        _write_words(buf, ke[wt] + 2, kv.ival[wt], t)
    buf[b_end[w] - 1] = np.where(last[w], _RBRACE, _COMMA)
    # two pieces per attribute; empty ones (at a harmless place) for spans done by orjson
    starts = np.empty((m, 2), np.int64)
    sizes = np.zeros((m, 2), np.int64)
    starts[:, 0] = a_start
    starts[:, 1] = a_start
    starts[w, 1] = b_start[w]
    sizes[w, 0] = ke[w] + 2 - a_start[w]
    sizes[w, 1] = b_end[w] - b_start[w]
    starts, sizes = starts.reshape(-1), sizes.reshape(-1)
    if (starts[1:] < starts[:-1] + sizes[:-1]).any():
        raise _Unusual("attribute pieces out of order")
    pieces = _cut(pbuf, starts, sizes)

    # a quote, backslash or control character in the data itself needs escaping
    def own() -> np.ndarray:  # the quotes we wrote: two per key, two per string value
        quotes = np.zeros((m, 2), np.int64)
        quotes[w, 0] = 2
        quotes[ws, 1] = 2
        return quotes.reshape(-1)

    written = int(sizes[0::2].astype(bool).sum())
    escaped = _pieces_needing_escapes(pieces, sizes, 2 * written + 2 * ws.size, own)
    if escaped.size:
        rows = np.unique(kv.span[escaped // 2])
        by_python[rows] = True
        python_rows = np.flatnonzero(by_python)
        python_json = _spans_json_slowly(buf, kv, offsets, python_rows, python_json)
    # the pieces of a span lie one after the other in the cut's data: its JSON is that run
    piece_offsets = np.frombuffer(
        pieces.buffers()[1], np.int64, count=len(pieces) + 1, offset=8 * pieces.offset
    )
    joined = pa.Array.from_buffers(
        pa.large_binary(),
        n,
        [None, pa.py_buffer(piece_offsets[2 * offsets]), pieces.buffers()[2] or pa.py_buffer(b"")],
    )
    out = _to_text(joined, pa.large_string())
    empty = offsets[1:] == offsets[:-1]
    if empty.any():
        out = pc.if_else(pa.array(empty), _EMPTY_OBJECT, out)
    if python_rows.size:
        mask = np.zeros(n, bool)
        mask[python_rows] = True
        texts = pa.array([python_json[r] for r in python_rows.tolist()], pa.large_string())
        out = pc.replace_with_mask(out, pa.array(mask), texts)
    return out.cast(pa.string())


def _spans_json_slowly(
    buf: np.ndarray,
    kv: _KVs,
    offsets: np.ndarray,
    rows: np.ndarray,
    done: dict[int, str] | None = None,
) -> dict[int, str]:
    """orjson text of the attributes of some spans (a repeated key keeps its last value)."""
    out = dict(done or {})
    for s in rows.tolist():
        if s not in out:
            obj: dict[str, Any] = {}
            for j in range(offsets[s], offsets[s + 1]):
                obj[kv.key(buf, j)] = kv.value(buf, j)
            out[s] = orjson.dumps(obj).decode()
    return out


class _Unusual(Exception):
    """A batch whose layout the vectorised path does not handle; decoded the slow way."""


def _pieces_needing_escapes(
    pieces: pa.Array, sizes: np.ndarray, quotes: int, own: Callable[[], np.ndarray]
) -> np.ndarray:
    """Indices of pieces holding characters JSON must escape, besides our own quotes.

    quotes: how many quote characters we wrote in all; own(): how many in each piece.
    """
    data_buf = pieces.buffers()[2]
    total = int(sizes.sum())
    if data_buf is None or total == 0:
        return np.zeros(0, np.int64)
    d = np.frombuffer(data_buf, np.uint8, count=total)
    if (
        d.min() >= 0x20
        and np.count_nonzero(d == 0x5C) == 0
        and (np.count_nonzero(d == _QUOTE) == quotes)
    ):
        return np.zeros(0, np.int64)
    bad = (d < 0x20) | (d == 0x5C)
    offs = np.zeros(sizes.size + 1, np.int64)
    np.cumsum(sizes, out=offs[1:])
    cum_bad = np.concatenate([[0], np.cumsum(bad)])
    cum_q = np.concatenate([[0], np.cumsum(d == _QUOTE)])
    n_bad = cum_bad[offs[1:]] - cum_bad[offs[:-1]]
    n_q = cum_q[offs[1:]] - cum_q[offs[:-1]]
    return np.flatnonzero((n_bad > 0) | (n_q != own()))


def _repeated_key_spans(
    span: np.ndarray, codes: np.ndarray, n_keys: int, counts: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """Spans in which some attribute key occurs more than once."""
    if span.size == 0:
        return np.zeros(0, np.int64)
    if n_keys <= 64:
        bits = np.left_shift(np.uint64(1), codes.astype(np.uint64))
        nonempty = np.flatnonzero(counts)
        seen = np.bitwise_or.reduceat(bits, offsets[nonempty])
        return nonempty[np.bitwise_count(seen) < counts[nonempty]]
    combined = np.sort(span * n_keys + codes)
    same = np.flatnonzero(combined[1:] == combined[:-1])
    return np.unique(combined[same] // n_keys)


def _attribute_columns(
    buf: np.ndarray,
    pbuf: pa.Buffer,
    kv: _KVs,
    n: int,
    codes: np.ndarray,
    index: dict[str, int],
) -> dict[str, pa.Array]:
    """http_method, http_route, http_status_code, http_url, peer_service per span."""
    out: dict[str, pa.Array] = {}
    is_str = kv.typ == _STR
    for column, keys in _COLUMN_KEYS.items():
        chosen = np.full(n, -1, np.int64)
        for key in reversed(keys):  # the most preferred last, so that it wins
            code = index.get(key)
            if code is not None:
                j = np.flatnonzero((codes == code) & is_str)
                chosen[kv.span[j]] = j
        rows = np.flatnonzero(chosen >= 0)
        if rows.size == 0:
            out[column] = pa.nulls(n, pa.string())
        else:
            pick = chosen[rows]
            out[column] = _sparse(n, rows, _to_text(_cut(pbuf, kv.vs[pick], kv.vlen[pick])))
    status = np.zeros(n, np.int64)
    has = np.zeros(n, bool)
    for key in reversed(HTTP_STATUS_KEYS):
        code = index.get(key)
        if code is None:
            continue
        j = np.flatnonzero((codes == code) & (kv.typ == _INT))
        j = j[(kv.ival[j] >= 0) & (kv.ival[j] < 2**31)]
        status[kv.span[j]] = kv.ival[j]
        has[kv.span[j]] = True
        for jj in np.flatnonzero((codes == code) & is_str).tolist():
            value = http_status(kv.value(buf, jj))
            if value is not None:
                status[kv.span[jj]] = value
                has[kv.span[jj]] = True
    out["http_status_code"] = pa.array(status.astype(np.int32), mask=~has)
    return out


def _patch_columns(
    columns: dict[str, pa.Array], rows: np.ndarray, values: list[tuple[Any, ...]]
) -> None:
    """Replace the http columns at rows (ascending) with values from span_attribute_columns."""
    mask = np.zeros(len(columns["http_method"]), bool)
    mask[rows] = True
    names = ("http_method", "http_route", "http_status_code", "http_url", "peer_service")
    for i, name in enumerate(names):
        typ = columns[name].type
        new = pa.array([v[i] for v in values], typ)
        columns[name] = pc.replace_with_mask(columns[name], pa.array(mask), new)


# ---------------------------------------------------------------------------------------
# Spans: trace_id 1, span_id 2, parent_span_id 4, name 5, kind 6, start 7, end 8,
# attributes 9 (repeated), status 15 { message 2, code 3 }

_TRACE, _SPAN, _PARENT, _NAME, _KIND, _START, _END, _STATUS, _ATTR = range(1, 10)
_SPAN_LAYOUT = Layout(
    {
        0x0A: _TRACE,
        0x12: _SPAN,
        0x22: _PARENT,
        0x2A: _NAME,
        0x30: _KIND,
        0x39: _START,
        0x41: _END,
        0x7A: _STATUS,
        0x4A: _ATTR,
    },
    repeated=_ATTR,
)
_STATUS_LAYOUT = Layout({0x12: 1, 0x18: 2})


@dataclass
class _Segment:
    """A run of spans of one scope inside a batch."""

    row: int  # first row in the batch
    resource: int  # index into the request's resources
    label: str  # "resourceSpans[r].scopeSpans[s]"
    first: int  # index of the first span in the scope


def _scan_spans(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Scan:
    """scan() with the usual head of a span read in one go for all spans.

    Serializers write fields in number order, so most spans begin ``0a 10 <trace id>
    12 08 <span id> [1a <trace state>] [22 08 <parent id>] 2a <name> [30 <kind>]
    39 <start> 41 <end>``. Where that holds, the scan goes on after the end time; other
    spans are read from their start.
    """
    last = buf.size - 40

    def at(q: np.ndarray) -> np.ndarray:
        return buf[np.minimum(q, last)]

    p = starts.copy()
    ok = (at(p) == 0x0A) & (at(p + 1) == 16) & (at(p + 18) == 0x12) & (at(p + 19) == 8)
    trace, span = p + 2, p + 20
    p += 28
    state = np.flatnonzero(at(p) == 0x1A)
    if state.size:
        length, k = _varint(buf, np.minimum(p[state] + 1, last))
        p[state] += 1 + k + length.astype(np.int64)
    has_parent = (at(p) == 0x22) & (at(p + 1) == 8)
    parent = np.where(has_parent, p + 2, starts)
    p += 10 * has_parent
    ok &= at(p) == 0x2A
    length, k = _varint(buf, np.minimum(p + 1, last))
    name, name_size = p + 1 + k, length.astype(np.int64)
    p = name + name_size
    has_kind = at(p) == 0x30
    kind = at(p + 1).astype(np.int64)
    ok &= ~has_kind | (kind < 0x80)
    p += 2 * has_kind
    ok &= (at(p) == 0x39) & (at(p + 9) == 0x41) & (name_size >= 0)
    p += 18
    ok &= p <= ends
    pos = np.empty((_SPAN_LAYOUT.nslots, starts.size), np.int64)
    pos[:] = starts
    val = np.zeros((_SPAN_LAYOUT.nslots, starts.size), np.int64)
    rows = np.flatnonzero(ok)
    if rows.size == ok.size:
        rows = slice(None)  # type: ignore[assignment]
    for slot, at_, size in (
        (_TRACE, trace, 16),
        (_SPAN, span, 8),
        (_PARENT, parent, 8 * has_parent),
        (_NAME, name, name_size),
        (_START, p - 17, 8),
        (_END, p - 8, 8),
    ):
        pos[slot, rows] = at_[rows]
        val[slot, rows] = size if isinstance(size, int) else size[rows]
    val[_KIND, rows] = np.where(has_kind, kind, 0)[rows]
    return scan(buf, starts, ends, _SPAN_LAYOUT, (np.where(ok, p, starts), pos, val))


def _span_table(
    raw: list[bytes], res_of_row: np.ndarray, resources: list[ResourceInfo]
) -> tuple[pa.Table, np.ndarray]:
    """The SPANS columns of raw span encodings, and which spans were malformed."""
    n = len(raw)
    lens = np.fromiter(map(len, raw), np.int64, count=n)
    data = bytearray().join([*raw, _PAD])  # a new list: raw may be read by another thread
    buf = np.frombuffer(data, np.uint8)
    pbuf = pa.py_buffer(data)
    ends = np.cumsum(lens)
    starts = ends - lens

    sp = _scan_spans(buf, starts, ends)
    bad = sp.bad.copy()
    pos, val = sp.pos, sp.val

    start_ns = _fixed64(buf, pos[_START])
    start_ns[val[_START] == 0] = 0
    end_ns = _fixed64(buf, pos[_END])
    end_ns[val[_END] == 0] = 0
    kind = np.where((val[_KIND] >= 0) & (val[_KIND] < len(KIND_VALUES)), val[_KIND], 0)

    st = scan(buf, pos[_STATUS], pos[_STATUS] + val[_STATUS], _STATUS_LAYOUT)
    bad |= st.bad
    code = np.where((st.val[2] >= 0) & (st.val[2] < len(STATUS_VALUES)), st.val[2], 0)

    kv = _decode_kvs(buf, sp.rep_msg, sp.rep_pos, sp.rep_size, bad)
    counts = np.bincount(kv.span, minlength=n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    encoded = _cut(pbuf, kv.ks, kv.klen).dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    keys = [k.decode("utf-8", "replace") for k in encoded.dictionary.to_pylist()]
    index = {k: i for i, k in enumerate(keys)}
    if len(index) < len(keys):  # two byte strings decoded to one text: merge their codes
        remap = np.array([index[k] for k in keys], np.int64)
        codes = remap[codes]
    dup = _repeated_key_spans(kv.span, codes, len(keys), counts, offsets)
    http = _attribute_columns(buf, pbuf, kv, n, codes, index)
    if dup.size:  # a repeated key: its last value counts, as in a dict (and in JSON)
        values = []
        for s in dup.tolist():
            attrs = {kv.key(buf, j): kv.value(buf, j) for j in range(offsets[s], offsets[s + 1])}
            values.append(span_attribute_columns(attrs))
        _patch_columns(http, dup, values)

    res_take = pa.array(res_of_row)

    def res_column(attr: str) -> pa.Array:
        return pa.array([getattr(r, attr) for r in resources], pa.string()).take(res_take)

    columns = {
        "trace_id": _hex_column(buf, pbuf, pos[_TRACE], val[_TRACE]),
        "span_id": _hex_column(buf, pbuf, pos[_SPAN], val[_SPAN]),
        "parent_id": _hex_column(buf, pbuf, pos[_PARENT], val[_PARENT], val[_PARENT] > 0),
        "service": res_column("service"),
        "instance": res_column("instance"),
        "version": res_column("version"),
        "host": res_column("host"),
        # an empty name is no name (OTLP requires one): null, refused by split_valid
        "operation": _text_column(pbuf, pos[_NAME], val[_NAME], _all_or_mask(val[_NAME] > 0)),
        "kind": _KINDS.take(pa.array(kind)),
        "start_ns": pa.array(start_ns, mask=start_ns == 0),
        "duration_ns": pa.array(end_ns - start_ns),
        "status": _STATUSES.take(pa.array(code)),
        "status_message": _text_column(pbuf, st.pos[1], st.val[1], st.val[1] > 0),
        **http,
        # last: it edits the buffer in place
        "attributes": _attributes_json(buf, pbuf, kv, n, offsets, dup),
    }
    return pa.table(columns).select(SPANS.names), bad


def _span_table_slowly(
    raw: list[bytes], res_of_row: np.ndarray, resources: list[ResourceInfo]
) -> tuple[pa.Table, np.ndarray]:
    """The same as _span_table, one span at a time with the generated classes (rare)."""
    rows = SpanRows()
    bad = np.zeros(len(raw), bool)
    for i, blob in enumerate(raw):
        res = resources[res_of_row[i]]
        try:
            span = trace_pb2.Span.FromString(blob)
            attrs = attrs_py(span.attributes)
        except (DecodeError, RecursionError):
            bad[i] = True
            rows.add(
                "",
                (
                    "",
                    "",
                    None,
                    res.service,
                    None,
                    None,
                    None,
                    "",
                    "unspecified",
                    None,
                    0,
                    "unset",
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    "{}",
                ),
            )
            continue
        start = span.start_time_unix_nano or None
        rows.add(
            "",
            (
                span.trace_id.hex(),
                span.span_id.hex(),
                span.parent_span_id.hex() or None,
                res.service,
                res.instance,
                res.version,
                res.host,
                span.name or None,
                kind_name(span.kind),
                start,
                span.end_time_unix_nano - (start or 0),
                status_name(span.status.code),
                span.status.message or None,
                *span_attribute_columns(attrs),
                dumps(attrs),
            ),
        )
    table = pa.table(
        {name: pa.array(col, SPANS.field(name).type) for name, col in rows.columns.items()}
    )
    return table, bad


def decode_span_batch(
    raw: list[bytes],
    segments: list[_Segment],
    resources: list[ResourceInfo],
    source: str,
    record_prefix: str = "",
) -> tuple[pa.Table, list[Reject]]:
    """Valid SPANS rows of raw span encodings, and a Reject for each bad span."""
    n = len(raw)
    seg_rows = [s.row for s in segments]
    res_of_row = np.repeat(
        np.array([s.resource for s in segments], np.int64),
        np.diff(np.array([*seg_rows, n], np.int64)),
    )
    try:
        table, bad = _span_table(raw, res_of_row, resources)
    except _Unusual as exc:
        log.debug("%s: decoding a batch span by span: %s", source, exc)
        table, bad = _span_table_slowly(raw, res_of_row, resources)

    def label(row: int) -> str:
        seg = segments[bisect.bisect_right(seg_rows, row) - 1]
        return f"{record_prefix}{seg.label}.spans[{seg.first + row - seg.row}]"

    rejects: list[Reject] = []
    if bad.any():
        rejects = [
            Reject(source, label(r), "malformed protobuf span")
            for r in np.flatnonzero(bad).tolist()
        ]
        kept = np.flatnonzero(~bad)
        table = table.filter(pa.array(~bad))
        good, more = split_valid(table, source, lambda row: label(int(kept[row])), True)
    else:
        good, more = split_valid(table, source, label, True)
    return good, rejects + more


def resource_infos(request: Message) -> list[ResourceInfo]:
    """The ResourceInfo of each ResourceSpans of a raw request."""
    return [resource_info(attrs_py(rs.resource.attributes)) for rs in request.resource_spans]


SUB_BATCH = 16_384  # spans decoded together: small enough to stay in the CPU caches


def iter_span_chunks(
    request: Message, source: str, batch_rows: int, record_prefix: str = ""
) -> Iterator[Chunk]:
    """SPANS chunks of batch_rows spans read (the first and the last fewer) from a
    RawTracesRequest.

    Spans are decoded SUB_BATCH at a time and the tables of one chunk concatenated. The
    first chunk is one sub-batch only, so the store starts writing while the rest decodes;
    so are the request's last SUB_BATCH spans, so little is left to write once decoding
    ends.
    """
    batch_rows = max(1, batch_rows)
    tail = max(0, span_count(request) - SUB_BATCH)  # where the last chunk begins
    gathered = 0  # spans of the chunks flushed so far

    def next_limit(first: bool) -> int:
        cap = min(batch_rows, SUB_BATCH) if first else batch_rows
        if gathered < tail:
            cap = min(cap, tail - gathered)
        return cap

    limit = next_limit(first=True)  # rows of the chunk being gathered
    infos = resource_infos(request)
    tables: list[pa.Table] = []
    rejects: list[Reject] = []
    records = 0  # spans of the chunk being gathered, decoded
    raw: list[bytes] = []  # spans of the sub-batch being gathered, not decoded yet
    segments: list[_Segment] = []

    def decode() -> None:
        nonlocal raw, segments, records
        table, bad = decode_span_batch(raw, segments, infos, source, record_prefix)
        tables.append(table)
        rejects.extend(bad)
        records += len(raw)
        raw, segments = [], []

    def flush() -> Chunk:
        nonlocal tables, rejects, records, limit, gathered
        data = pa.concat_tables(tables) if len(tables) != 1 else tables[0]
        chunk = Chunk("spans", data, rejects, records=records)
        gathered += records
        tables, rejects, records = [], [], 0
        limit = next_limit(first=False)
        return chunk

    for r, rs in enumerate(request.resource_spans):
        for s, ss in enumerate(rs.scope_spans):
            spans = ss.spans
            total = len(spans)
            first = 0
            while first < total:
                room = min(SUB_BATCH, limit - records) - len(raw)
                take = min(total - first, room)
                segments.append(_Segment(len(raw), r, f"resourceSpans[{r}].scopeSpans[{s}]", first))
                raw.extend(spans[first : first + take])
                first += take
                if take == room:
                    decode()
                    if records == limit:
                        yield flush()
    if raw:
        decode()
    if tables or rejects:
        yield flush()


def span_count(request: Message) -> int:
    """How many raw spans the request holds."""
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


# span: start/end fixed64 (7, 8), kind varint (6), flags fixed32 (16);
# log record: time and observed time fixed64 (1, 11)
_SNIFF_LAYOUT = Layout({0x39: 1, 0x41: 2, 0x30: 3, 0x85: 4, 0x09: 5, 0x59: 6})


def record_kind(request: Message, sample: int = 32) -> str:
    """What the raw 'spans' of a request are: "spans", "metrics" or "logs".

    ExportMetricsServiceRequest and ExportLogsServiceRequest have the outer shape of a
    traces request, so their Metric and LogRecord messages land where spans would. A span
    carries start/end times as fixed64 fields 7 and 8, a kind as varint 6 or flags as
    fixed32 16; a log record its times as fixed64 fields 1 and 11; a Metric none of these.
    """
    raw: list[bytes] = []
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            raw.extend(ss.spans[: sample - len(raw)])
            if len(raw) >= sample:
                break
    if not raw:
        return "spans"
    lens = np.fromiter(map(len, raw), np.int64, count=len(raw))
    buf = np.frombuffer(b"".join([*raw, _PAD]), np.uint8)
    ends = np.cumsum(lens)
    found = scan(buf, ends - lens, ends, _SNIFF_LAYOUT).pos > ends - lens
    if found[1:5].any():
        return "spans"
    return "logs" if found[5:].any() else "metrics"
