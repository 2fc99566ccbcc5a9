"""Log templates (Drain3 over masked, deduplicated bodies), their plain-JSON persistence,
log lines as trace events interleaved by time, and per-window log counts."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from spanomaly.errors import InputError, ModelError
from spanomaly.features import logs as lf
from spanomaly.features.traces import EVENT_COLUMNS, events

NORMAL = [
    "12:00:01.5 INFO OrderService#42 order 1234 placed for user 9f86d081884c7d659a2feaa0c55ad015",
    "12:00:02.5 INFO OrderService#42 order 88 placed for user 1b4f0e9851971998e732078544c96b36",
    "12:00:03.1 INFO PaymentService#7 payment of 12.50 accepted from 10.0.0.7:8080",
    "12:00:04.1 INFO PaymentService#7 payment of 3.99 accepted from 10.0.0.8:8080",
    "12:00:05.0 WARN StockService#9 stock low for item 3f2b5a9e-8c1d-4e2f-9a7b-1c2d3e4f5a6b",
    "12:00:06.0 WARN StockService#9 stock low for item 0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
]


def test_masking_and_mining_group_lines_by_their_constant_words() -> None:
    miner = lf.TemplateMiner().fit(pa.array(NORMAL * 50))
    out = miner.transform(pa.array(NORMAL))
    ids = out.column("template_id").to_pylist()
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[4] == ids[5]
    assert len(set(ids)) == 3 == miner.n_templates
    template = out.column("template").to_pylist()[4]
    assert template == "<*> WARN StockService#<*> stock low for item <*>"
    params = json.loads(out.column("params").to_pylist()[2])
    assert params == ["12:00:03.1", "7", "12.50", "10.0.0.7:8080"]


def test_unseen_lines_get_their_own_id_and_nothing_is_learned_at_transform() -> None:
    miner = lf.TemplateMiner().fit(pa.array(NORMAL))
    before = miner.n_templates
    out = miner.transform(
        pa.array(["12:00:07.0 ERROR OrderService#51 fallback taken: price lookup failed"])
    )
    assert out.column("template_id").to_pylist() == [lf.UNSEEN]
    assert out.column("template").to_pylist() == [lf.UNSEEN_TEXT]
    assert miner.n_templates == before


def test_templates_round_trip_through_plain_json() -> None:
    miner = lf.TemplateMiner(lf.TemplateConfig(masks=("uuid", "number"))).fit(pa.array(NORMAL))
    text = miner.dumps()
    doc = json.loads(text)
    assert doc["format"] == lf.FORMAT and "py/object" not in text  # no jsonpickle
    again = lf.TemplateMiner.loads(text)
    assert again.template_config.masks == ("uuid", "number")
    probe = pa.array([*NORMAL, "something else entirely"])
    assert again.transform(probe).equals(miner.transform(probe))
    with pytest.raises(ModelError):
        lf.TemplateMiner.loads('{"format": "other"}')
    with pytest.raises(InputError, match="log masks"):
        lf.TemplateConfig(masks=("phone",))


def test_only_the_chosen_masks_apply() -> None:
    line = "user 1234 from 10.0.0.7 id 3f2b5a9e-8c1d-4e2f-9a7b-1c2d3e4f5a6b"
    con = lf._connect()
    try:
        masked = con.sql(f"SELECT {lf.mask_sql(repr(line), ('uuid',))}").fetchall()[0][0]
    finally:
        con.close()
    assert masked == "user 1234 from 10.0.0.7 id <*>"


def _spans() -> pa.Table:
    rows = [
        ("t" * 32, "a" * 16, None, "gw", "gw-1", "/order", "server", 0, 100),
        ("t" * 32, "b" * 16, "a" * 16, "gw", "gw-1", "HTTP POST", "client", 10, 60),
        ("t" * 32, "c" * 16, "b" * 16, "shop", "shop-1", "/api/order", "server", 15, 50),
    ]
    names = ["trace_id", "span_id", "parent_id", "service", "instance", "operation", "kind"]
    names += ["start_ns", "duration_ns"]
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})


def _logs(times: list[int], bodies: list[str], severity: str = "INFO") -> pa.Table:
    n = len(times)
    return pa.table(
        {
            "time_ns": pa.array(times, pa.int64()),
            "service": ["shop"] * n,
            "instance": ["shop-1"] * n,
            "trace_id": ["t" * 32] * n,
            "span_id": ["c" * 16] * n,
            "severity": [severity] * n,
            "body": bodies,
        }
    )


def test_log_events_interleave_by_time_and_blame_their_service() -> None:
    miner = lf.TemplateMiner().fit(pa.array(["order 1 stored", "lookup of item 5"]))
    lines = _logs([40, 20, -5, 12], ["order 7 stored", "lookup of item 9", "early", "gw line"])
    span = pa.array(["c" * 16, "c" * 16, "d" * 16, "e" * 16])  # d, e: spans not stored
    lines = lines.set_column(lines.schema.get_field_index("span_id"), "span_id", span)
    ev = lf.log_events(lines, miner)
    merged = lf.interleave(events(_spans()), ev)
    assert merged.column_names == list(EVENT_COLUMNS)
    ops = merged.column("operation").to_pylist()
    # a line of an unknown span by the trace's clock (before the first span, after the
    # client span that started at 10); a line of a known span right after that span's event,
    # its span's lines by time
    assert ops == [
        "log: <unseen>", "/order", "HTTP POST", "log: <unseen>", "/api/order",
        "log: lookup of item <*>", "log: order <*> stored",
    ]  # fmt: skip
    log_rows = merged.filter(pa.compute.starts_with(merged.column("key"), "log"))
    assert set(log_rows.column("blame_service").to_pylist()) == {"shop"}
    assert set(log_rows.column("duration_ns").to_pylist()) == {0}


def test_window_counts_per_instance() -> None:
    miner = lf.TemplateMiner().fit(pa.array(["order 1 stored"]))
    lines = pa.concat_tables(
        [
            _logs([1, 2], ["order 2 stored", "order 3 stored"]),
            _logs([3], ["boom: fallback taken"], severity="ERROR"),
        ]
    )
    counts = lf.window_counts(lf.log_events(lines, miner), 1.0)
    row = counts.to_pylist()[0]
    assert row["lines_s"] == 3.0 and row["l.warning_share"] == 0.0
    assert row["l.error_share"] == row["l.unseen_share"] == pytest.approx(1 / 3)
    windows = pa.table(
        {"time_ns": pa.array([0, 1_000_000_000], pa.int64()), "service": ["shop", "shop"],
         "instance": ["shop-1", "shop-1"], "t.requests_s": [1.0, 2.0]}
    )  # fmt: skip
    joined = lf.with_window_counts(windows, counts).to_pylist()
    assert joined[0]["l.error_share"] == pytest.approx(1 / 3) and joined[1]["l.error_share"] == 0
    assert "lines_s" not in joined[0]  # only the shares become features


def test_extend_mines_only_unseen_lines_and_keeps_the_known_templates() -> None:
    miner = lf.TemplateMiner().fit(pa.array(NORMAL))
    known = miner.to_json()["templates"]
    new = [
        "12:00:09.0 ERROR OrderService#51 fallback taken for order 77: price lookup failed",
        "12:00:09.5 ERROR OrderService#51 fallback taken for order 78: price lookup failed",
        # fits a known template only if it widened: it must not
        "12:00:10.0 INFO OrderService#42 order 5 placed for guest",
    ]
    assert miner.extend(pa.array(NORMAL + new)) == 2
    assert miner.to_json()["templates"][: len(known)] == known
    ids = miner.transform(pa.array(new)).column("template_id").to_pylist()
    assert lf.UNSEEN not in ids and ids[0] == ids[1]


def test_log_keys_below_warn_are_weak_evidence() -> None:
    sep = " | "
    tokens = [
        "<pad>",
        sep.join(["gateway", "api", "GET /x", "order", "ok"]),
        sep.join(["log", "order", "INFO", "order <*> placed"]),
        sep.join(["log", "order", "WARN", "stock low"]),
        sep.join(["log", "order", "ERROR", "<unseen>"]),
        sep.join(["log", "order", "DEBUG", "cache hit"]),
    ]
    assert lf.weak_log_keys(tokens).tolist() == [False, False, True, False, False, True]
