"""The trace model: model directory, version errors, findings, feedback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spanomaly.detect.model import FORMAT_VERSION, TraceModel, finding_id
from spanomaly.errors import InputError, ModelError
from spanomaly.features.traces import FeatureConfig, events
from spanomaly.schema import FINDINGS
from tests.synthetic import PLANTS, T0, TraceBuilder, normal_traces, plant


@pytest.fixture(scope="module")
def data() -> dict:
    train = TraceBuilder(seed=5)
    normal_traces(train, 300)
    test = TraceBuilder(seed=6)
    normal_traces(test, 50, start_ns=T0 + 10**12)
    spans = {k: plant(test, k, T0 + 2 * 10**12 + i * 10**9) for i, k in enumerate(PLANTS)}
    return {"train": events(train.table()), "test": events(test.table()), "planted": spans}


@pytest.fixture(scope="module")
def model(data: dict) -> TraceModel:
    return TraceModel(
        sequence="lstm",
        duration="robust",
        sequence_params={"hidden_size": 16, "num_layers": 1, "epochs": 30},
    ).fit(data["train"], {"period_from": "then"})


def test_model_directory_round_trips(model: TraceModel, data: dict, tmp_path: Path) -> None:
    model.save(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == [
        "config.json",
        "duration.safetensors",
        "sequence.safetensors",
        "vocabulary.json",
    ]
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["format_version"] == FORMAT_VERSION
    assert cfg["trained_on"]["traces"] == 300 and cfg["trained_on"]["period_from"] == "then"
    assert cfg["trained_on"]["from"].startswith("2023-11-14")
    assert cfg["detectors"]["sequence"]["detector"] == "lstm"
    again = TraceModel.load(tmp_path / "m")
    a, b = model.detect(data["test"]), again.detect(data["test"])
    assert np.allclose(a.score, b.score)
    assert a.findings.equals(b.findings)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda c: c.update(format_version=FORMAT_VERSION + 1), "cannot be read by spanomaly"),
        (lambda c: c.update(format="something-else"), "not a spanomaly trace model"),
        (lambda c: c["detectors"]["sequence"].update(state_version=7), "state version 7"),
        (lambda c: c["detectors"]["sequence"].update(detector="gru"), "unknown detector 'gru'"),
        (lambda c: c.pop("features"), "broken model directory"),
    ],
)
def test_an_incompatible_model_is_one_clear_error(
    model: TraceModel, tmp_path: Path, change: object, needle: str
) -> None:
    model.save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    change(cfg)  # type: ignore[operator]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=needle) as err:
        TraceModel.load(tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_missing_or_broken_directory(model: TraceModel, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model here"):
        TraceModel.load(tmp_path / "nothing")
    model.save(tmp_path)
    (tmp_path / "sequence.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="broken model directory"):
        TraceModel.load(tmp_path)


def test_findings_follow_the_schema(model: TraceModel, data: dict) -> None:
    result = model.detect(data["test"])
    f = result.findings
    assert f.schema.equals(FINDINGS)
    assert f.num_rows == int(result.anomalous.sum()) >= len(PLANTS)
    rows = f.to_pylist()
    for r in rows:
        assert r["finding_id"] == finding_id(r["trace_id"])
        assert r["entity"] == "trace" and r["reason"] and r["score"] >= r["threshold"] == 1.0
        details = json.loads(r["details"])
        assert details["event"]["span_id"] == r["span_id"]
        assert details["trace_id"] == r["trace_id"]
    assert len({r["finding_id"] for r in rows}) == len(rows)
    assert result.trace_ids.shape == result.start_ns.shape == result.score.shape


def test_feedback_makes_a_false_positive_normal(data: dict) -> None:
    model = TraceModel(sequence="ngram", duration="robust").fit(data["train"])
    test = data["test"]
    result = model.detect(test)
    flagged = result.findings.to_pylist()
    by_span = {r["span_id"]: r for r in flagged}
    fp = by_span[data["planted"]["unknown_op"]]["trace_id"]
    slow = by_span[data["planted"]["slow_span"]]["trace_id"]
    ids = test.column("trace_id").to_numpy(zero_copy_only=False)
    n_keys = len(model.vocabulary_)
    change = model.update(test.filter(ids == fp))
    assert change == {"traces": 1, "new_keys": 1, "flagged_before": 1, "flagged_after": 0}
    assert len(model.vocabulary_) == n_keys + 1
    after = model.detect(test)
    still = set(after.findings.column("trace_id").to_pylist())
    assert fp not in still and slow in still
    assert model.trained_on_["feedback_traces"] == 1
    # and the slow span: its key's normal range widens, the unknown operation stays learnt
    model.update(test.filter(ids == slow))
    assert slow not in set(model.detect(test).findings.column("trace_id").to_pylist())


def test_options_are_checked(data: dict) -> None:
    with pytest.raises(InputError, match="sequence detector"):
        TraceModel(sequence="gru").fit(data["train"])
    with pytest.raises(InputError, match="no detector"):
        TraceModel(sequence=None, duration=None).fit(data["train"])
    with pytest.raises(ModelError, match="no traces"):
        TraceModel().fit(data["train"].slice(0, 0))
    with pytest.raises(InputError, match="unexpected keyword"):
        TraceModel(sequence="ngram", sequence_params={"bogus": 1}).fit(data["train"])


def test_tree_order_and_other_key_fields() -> None:
    cfg = FeatureConfig(order="tree", key_fields=("service", "operation"))
    b = TraceBuilder(seed=5)
    normal_traces(b, 300)
    model = TraceModel(features=cfg, sequence="ngram", duration="robust").fit(
        events(b.table(), cfg)
    )
    assert all(len(k.split(" | ")) == 2 for k in model.vocabulary_.tokens[4:])
    assert model.feature_config.order == "tree"


def test_an_error_is_named_where_it_started_not_where_it_surfaced(model: TraceModel) -> None:
    import pyarrow as pa

    from tests.synthetic import order_request

    b = TraceBuilder(seed=9)
    ids = b.add(order_request(), T0 + 3 * 10**12)
    spans = b.table()
    parent = dict(zip(spans.column("span_id").to_pylist(), spans.column("parent_id").to_pylist(),
                      strict=True))  # fmt: skip
    failed, sid = set(), ids["order_read"]
    while sid is not None:  # the database read fails, and with it every caller up to the root
        failed.add(sid)
        sid = parent.get(sid)
    status = ["error" if s in failed else "ok" for s in spans.column("span_id").to_pylist()]
    spans = spans.set_column(spans.schema.get_field_index("status"), "status", pa.array(status))
    result = model.detect(events(spans))
    assert result.anomalous.all()
    row = result.findings.to_pylist()[0]
    assert row["span_id"] == ids["order_read"] and row["service"] == "order-service"


def test_of_error_lines_up_a_call_chain_the_deepest_is_named(model: TraceModel) -> None:
    import pyarrow as pa

    from spanomaly.detect.trace_findings import span_depth
    from spanomaly.features.logs import interleave
    from spanomaly.features.traces import EVENT_COLUMNS, Sequences
    from tests.synthetic import order_request

    b = TraceBuilder(seed=10)
    ids = b.add(order_request(), T0 + 4 * 10**12)
    spans = events(b.table())
    rows = {r["span_id"]: r for r in spans.to_pylist()}
    root = next(r for r in rows.values() if r["parent_id"] is None)
    # the database read fails; the service logs it, and so does the gateway the failure
    # reached, later but on a span above it (its line comes first in the trace's events)
    lines = []
    for r, at in ((rows[ids["order_read"]], 1), (root, 2)):
        line = {c: r.get(c) for c in EVENT_COLUMNS}
        line.update(
            parent_id=r["span_id"], operation="log: failed", parent_service=r["service"],
            callee="", status_class="error", blame_service=r["service"],
            blame_instance=r["instance"], key=f"log | {r['service']} | ERROR | failed",
            start_ns=root["start_ns"] + at * 10**6, duration_ns=0, self_ns=0,
        )  # fmt: skip
        lines.append(line)
    schema = spans.select(EVENT_COLUMNS).schema
    both = interleave(spans, pa.Table.from_pylist(lines, schema=schema))
    row = model.detect(both).findings.to_pylist()[0]
    assert row["service"] == "order-service" and "failed" in row["operation"]
    keys, sids = both.column("key").to_pylist(), both.column("span_id").to_pylist()
    at_gateway, at_order = (
        keys.index(f"log | {s} | ERROR | failed") for s in ("gateway", "order-service")
    )
    assert at_gateway < at_order  # not the first error line: the deepest
    seq = Sequences(np.zeros(both.num_rows, np.int64), np.array([0, both.num_rows]), 4, events=both)
    depth = span_depth(seq)
    read = next(
        i
        for i, (k, s) in enumerate(zip(keys, sids, strict=True))
        if s == ids["order_read"] and not k.startswith("log")
    )
    assert depth[sids.index(root["span_id"])] == 0 and depth[at_gateway] == 1
    assert depth[at_order] == depth[read] + 1 == 4
