"""Trace assembly, event keys, templating, self time, vocabulary and datasets A and B."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from spanomaly.errors import InputError
from spanomaly.features import traces as T
from tests.synthetic import T0, TraceBuilder, normal_traces, order_request


def _spans(rows: list[dict]) -> pa.Table:
    base = {
        "parent_id": None,
        "instance": None,
        "kind": None,
        "status": "unset",
        "http_route": None,
        "http_url": None,
        "http_status_code": None,
    }
    return pa.Table.from_pylist([{**base, **r} for r in rows])


def test_template_sql_replaces_ids_numbers_uuids_hashes() -> None:
    con = duckdb.connect()
    cases = {
        "GET /api/v1/orders/123/items/45": "GET /api/v1/orders/{n}/items/{n}",
        "http://h:8080/api/v1/users/0f8fad5b-d9cb-469f-a165-70867728950e?x=1": (
            "/api/v1/users/{uuid}"
        ),
        "/api/v1/trains/G1234/seats/7": "/api/v1/trains/{id}/seats/{n}",
        "POST /a/deadbeefdeadbeefdeadbeef/x": "POST /a/{hash}/x",
        "/api/v1/user/bob@example.com": "/api/v1/user/{email}",
        "/api/v1/x/1/2/3": "/api/v1/x/{n}/{n}/{n}",
        "/api/v1/orders": "/api/v1/orders",
    }
    for raw, want in cases.items():
        assert con.execute(f"SELECT {T.template_sql('?')}", [raw]).fetchone()[0] == want


def test_events_keys_callee_self_time_and_order() -> None:
    ms = 1_000_000
    spans = _spans(
        [
            # root server span of the gateway, 0..100 ms
            {"trace_id": "t1", "span_id": "a", "service": "gw", "operation": "/*",
             "start_ns": T0, "duration_ns": 100 * ms},
            # client call to orders: 10..60 ms, its server child 15..55 ms
            {"trace_id": "t1", "span_id": "b", "parent_id": "a", "service": "gw",
             "operation": "HTTP GET", "kind": "client", "start_ns": T0 + 10 * ms,
             "duration_ns": 50 * ms},
            {"trace_id": "t1", "span_id": "c", "parent_id": "b", "service": "orders",
             "instance": "orders-1", "operation": "GET /orders/42", "kind": "server",
             "start_ns": T0 + 15 * ms, "duration_ns": 40 * ms, "http_status_code": 503},
            # two overlapping children of c: 20..40 and 30..50 -> union 30 ms
            {"trace_id": "t1", "span_id": "d", "parent_id": "c", "service": "orders",
             "operation": "SELECT", "start_ns": T0 + 20 * ms, "duration_ns": 20 * ms},
            {"trace_id": "t1", "span_id": "e", "parent_id": "c", "service": "orders",
             "operation": "SELECT", "start_ns": T0 + 30 * ms, "duration_ns": 20 * ms},
            # a second trace, earlier: must come first
            {"trace_id": "t0", "span_id": "z", "service": "gw", "operation": "/*",
             "start_ns": T0 - ms, "duration_ns": ms},
        ]
    )  # fmt: skip
    ev = T.events(spans)
    assert ev.column("trace_id").to_pylist() == ["t0", "t1", "t1", "t1", "t1", "t1"]
    rows = {r["span_id"]: r for r in ev.to_pylist()}
    assert [r for r in ev.column("span_id").to_pylist()] == ["z", "a", "b", "c", "d", "e"]
    b, c = rows["b"], rows["c"]
    assert b["callee"] == "orders GET /orders/{n}"
    assert (b["blame_service"], b["blame_instance"]) == ("orders", "orders-1")
    assert b["self_ns"] == 10 * ms  # the call's network and queueing time
    assert c["self_ns"] == 10 * ms  # 40 ms minus the union (30 ms) of its children
    assert rows["a"]["self_ns"] == 50 * ms
    assert c["parent_service"] == "gw" and rows["a"]["parent_service"] == ""
    assert c["status_class"] == "error" and c["operation"] == "GET /orders/{n}"
    assert c["key"] == " | ".join(["gw", "orders", "GET /orders/{n}", "", "error"])
    assert b["key"].split(" | ")[3] == "orders GET /orders/{n}"


def test_route_template_and_url_of_a_bare_client_span() -> None:
    spans = _spans(
        [
            {"trace_id": "t", "span_id": "a", "service": "s", "operation": "GET /users/7",
             "http_route": "/users/{id}", "start_ns": T0, "duration_ns": 10},
            {"trace_id": "t", "span_id": "b", "parent_id": "a", "service": "s",
             "operation": "HTTP GET", "http_url": "http://x/api/items/123?q=1",
             "start_ns": T0 + 1, "duration_ns": 5},
        ]
    )  # fmt: skip
    ops = T.events(spans).column("operation").to_pylist()
    assert ops == ["GET /users/{id}", "HTTP GET /api/items/{n}"]


def test_tree_order_keeps_subtrees_together_start_order_interleaves() -> None:
    ms = 1_000_000
    spans = _spans(
        [
            {"trace_id": "t", "span_id": "r", "service": "s", "operation": "root",
             "start_ns": T0, "duration_ns": 100 * ms},
            {"trace_id": "t", "span_id": "a", "parent_id": "r", "service": "s",
             "operation": "A", "start_ns": T0 + 1 * ms, "duration_ns": 50 * ms},
            {"trace_id": "t", "span_id": "b", "parent_id": "r", "service": "s",
             "operation": "B", "start_ns": T0 + 2 * ms, "duration_ns": 50 * ms},
            {"trace_id": "t", "span_id": "a1", "parent_id": "a", "service": "s",
             "operation": "A1", "start_ns": T0 + 3 * ms, "duration_ns": ms},
        ]
    )  # fmt: skip
    start = T.events(spans, T.FeatureConfig(order="start")).column("span_id").to_pylist()
    tree = T.events(spans, T.FeatureConfig(order="tree")).column("span_id").to_pylist()
    assert start == ["r", "a", "b", "a1"]
    assert tree == ["r", "a", "a1", "b"]


def test_a_server_span_whose_clock_runs_early_never_precedes_its_client() -> None:
    spans = _spans(
        [
            {"trace_id": "t", "span_id": "c", "service": "a", "operation": "HTTP GET",
             "start_ns": T0 + 500, "duration_ns": 10_000},
            {"trace_id": "t", "span_id": "s", "parent_id": "c", "service": "b",
             "operation": "/x", "start_ns": T0, "duration_ns": 5_000},
        ]
    )  # fmt: skip
    assert T.events(spans).column("span_id").to_pylist() == ["c", "s"]


def test_config_validation_and_json() -> None:
    with pytest.raises(InputError, match="key fields"):
        T.FeatureConfig(key_fields=("nope",))
    with pytest.raises(InputError, match="event order"):
        T.FeatureConfig(order="random")
    cfg = T.FeatureConfig(key_fields=("service", "operation"), order="tree")
    assert T.FeatureConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(InputError, match="missing column"):
        T.events(pa.table({"trace_id": ["t"]}))


def test_vocabulary_fit_encode_add_json() -> None:
    voc = T.Vocabulary.fit(pa.array(["b", "a", "b", "c", "b", "a"]))
    assert voc.tokens[T.N_SPECIAL :] == ["b", "a", "c"]
    ids = voc.encode(pa.array(["a", "zzz", "b", "<pad>"]))
    assert ids.tolist() == [5, T.UNK, 4, T.UNK]
    assert voc.add(["d", "a"]) == [7, 5]
    again = T.Vocabulary.from_json(voc.to_json())
    assert again.tokens == voc.tokens
    assert T.Vocabulary.fit(pa.array(["x", "y", "y"]), min_count=2).tokens[T.N_SPECIAL :] == ["y"]


def test_sequences_datasets_unique_subset() -> None:
    b = TraceBuilder(seed=1)
    normal_traces(b, 30)
    b.add(order_request(), T0 + 10**10)
    ev = T.events(b.table())
    voc = T.Vocabulary.fit(ev.column("key"))
    cfg = T.FeatureConfig()
    seqs = T.sequences(ev, voc, cfg)
    assert seqs.n_traces == 31 and seqs.n_events == ev.num_rows
    assert seqs.offsets[-1] == seqs.n_events and (seqs.lengths > 0).all()
    assert (seqs.keys >= T.N_SPECIAL).all()
    # dataset B: log1p(x / 1 ms)
    dur = ev.column("duration_ns").to_numpy()
    assert np.allclose(seqs.log_duration, np.log1p(dur / 1e6), rtol=1e-5)
    assert (seqs.log_self <= seqs.log_duration + 1e-6).all()
    reps, inverse, counts = seqs.unique()
    assert len(reps) == 2 and counts.sum() == 31  # orders and logins
    for t in range(seqs.n_traces):
        a = seqs.keys[seqs.offsets[t] : seqs.offsets[t + 1]]
        r = reps[inverse[t]]
        assert np.array_equal(a, seqs.keys[seqs.offsets[r] : seqs.offsets[r + 1]])
    sub = seqs.subset(np.array([3, 0]))
    assert sub.n_traces == 2 and list(sub.trace_ids) == [seqs.trace_ids[3], seqs.trace_ids[0]]
    assert np.array_equal(sub.keys[: sub.lengths[0]], seqs.keys[seqs.offsets[3] : seqs.offsets[4]])
    assert sub.events is not None and sub.events.num_rows == sub.n_events


def test_a_call_that_never_reached_its_server_is_blamed_on_who_answers_there() -> None:
    def trace(t: str, url: str, reached: str | None, status: str = "unset") -> list[dict]:
        rows = [
            {"trace_id": t, "span_id": t + "r", "service": "web", "instance": "web-1",
             "operation": "GET /", "kind": "server", "start_ns": T0, "duration_ns": 100},
            {"trace_id": t, "span_id": t + "c", "parent_id": t + "r", "service": "web",
             "instance": "web-1", "operation": "GET", "kind": "client", "http_url": url,
             "status": status, "start_ns": T0 + 1, "duration_ns": 90},
        ]  # fmt: skip
        if reached:
            rows.append(
                {
                    "trace_id": t,
                    "span_id": t + "s",
                    "parent_id": t + "c",
                    "service": "db",
                    "instance": reached,
                    "operation": "GET /x",
                    "kind": "server",
                    "start_ns": T0 + 2,
                    "duration_ns": 80,
                }
            )
        return rows

    spans = _spans(
        trace("a", "http://10.0.0.1:81/x/1", "db-1")
        + trace("b", "http://10.0.0.2:81/x/2", "db-2")
        + trace("c", "http://10.0.0.2:81/x/3", None, "error")  # reset: no server span
        + trace("d", "http://10.0.0.9:81/x/4", None, "error")  # an address nobody answered
    )
    ev = T.events(spans)
    blame = {
        r["span_id"]: (r["blame_service"], r["blame_instance"])
        for r in ev.to_pylist()
        if r["span_id"].endswith("c")
    }
    assert blame == {
        "ac": ("db", "db-1"),
        "bc": ("db", "db-2"),
        "cc": ("db", "db-2"),  # the instance that answers at 10.0.0.2:81
        "dc": ("web", "web-1"),  # nothing known: the caller itself
    }
