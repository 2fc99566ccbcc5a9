"""64-bit hashes of row keys in Arrow batches, and the set of keys a transaction wrote:
how the DuckDB store skips probing stored keys on bulk Arrow writes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_MIX = np.uint64(0x9E3779B97F4A7C15)


def _text_words(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray] | None:
    """The bytes of a text column as (rows, words) uint64 arrays, one per chunk, where
    every value is present and of one width; None otherwise."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out: list[np.ndarray] = []
    width = None
    for chunk in chunks:
        n = len(chunk)
        if n == 0:
            continue
        if chunk.null_count or chunk.type != pa.string():
            return None
        offsets = np.frombuffer(chunk.buffers()[1], np.int32, n + 1, 4 * chunk.offset)
        w = int(offsets[1] - offsets[0])
        if width is None:
            width = w
        if w != width or int(offsets[-1] - offsets[0]) != n * w or (np.diff(offsets) != w).any():
            return None
        rows = np.zeros((n, -(-w // 8) * 8 + 8), np.uint8)  # whole words, then the width
        if w:
            raw = np.frombuffer(chunk.buffers()[2], np.uint8, n * w, int(offsets[0]))
            rows[:, :w] = raw.reshape(n, w)
        rows[:, -8:] = np.frombuffer(np.uint64(w).tobytes(), np.uint8)
        out.append(rows.view("<u8"))
    return out


def key_hashes(data: pa.Table, keys: tuple[str, ...]) -> np.ndarray | None:
    """A 64-bit hash of each row's key (text columns of one width each, never null), or
    None where a key column is not like that. Equal keys hash alike."""
    hashes = np.zeros(data.num_rows, np.uint64)
    for key in keys:
        words = _text_words(data.column(key))
        if words is None:
            return None
        start = 0
        for block in words:
            h = hashes[start : start + len(block)]
            for j in range(block.shape[1]):
                h ^= block[:, j]
                h *= _MIX
                h ^= h >> np.uint64(29)
            start += len(block)
    return hashes


class FreshKeys:
    """Hashes of the keys a transaction wrote into a table that was empty when it began.

    A batch row whose key hash is not among them cannot have a stored twin, so it is
    inserted without probing the stored keys (1 M OTLP spans: about 0.6 s less); rows whose
    hash is there (a re-sent span, or a collision) are probed as before.
    """

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []  # sorted, each at most half the size of the one before

    def check_and_add(self, hashes: np.ndarray) -> tuple[np.ndarray, bool]:
        """Per hash: whether it was added before; and whether the hashes are distinct among
        themselves (then so are their keys). Then remember them."""
        order = np.argsort(hashes)
        needles = hashes[order]  # sorted needles: each search starts where the last ended
        found = np.zeros(hashes.size, bool)
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, needles), run.size - 1)
            found[order] |= run[at] == needles
        distinct = not (needles[1:] == needles[:-1]).any()
        # runs of similar size are merged (a stable sort of two sorted runs is a linear
        # merge), so a lookup reads O(log n) runs
        self.runs.append(needles)
        while len(self.runs) > 1 and self.runs[-2].size <= 2 * self.runs[-1].size:
            last = self.runs.pop()
            self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]), kind="stable")
        return found, distinct
