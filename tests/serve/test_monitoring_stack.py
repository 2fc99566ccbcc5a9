"""The collector in the stack users run: a real Prometheus scraping `/metrics`, and a real
Alertmanager receiving a testbed fault's incident (firing, then resolved)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.serve.conftest import PROTOBUF, StartServer, clean_env, spans_request
from tests.serve.stack import (
    alertmanager,
    hook_server,
    needs_alertmanager,
    needs_prometheus,
    prometheus,
)


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]


def _until(what: str, cond: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (got := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return got


@needs_prometheus
def test_prometheus_scrapes_the_collector_with_its_token(
    serve: StartServer, tmp_path: Path
) -> None:
    server = serve("--token", "t0k")
    auth = {"Authorization": "Bearer t0k"}
    body = spans_request(1, 50, bad_ids=2).SerializeToString()
    assert server.post("/v1/traces", body, {**PROTOBUF, **auth}).status_code == 200
    assert server.get("/metrics").status_code == 401  # the token opens it, as every route
    text = server.get("/metrics", headers=auth).text
    assert 'spanomaly_records_received_total{signal="spans"} 50.0' in text
    assert 'spanomaly_records_rejected_total{signal="spans"} 2.0' in text
    assert (
        "spanomaly_request_duration_seconds_bucket" in text
        and "spanomaly_writer_queue_rows" in text
    )
    target = server.url.removeprefix("http://")
    scrape = (
        "  - job_name: spanomaly\n    authorization:\n      type: Bearer\n      credentials: t0k\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    with prometheus(tmp_path, scrape) as prom:
        up = _until("a scrape", lambda: _query(prom.url, 'up{job="spanomaly"} == 1'))
        assert up[0]["metric"]["instance"] == target
        got = _until(
            "the counters",
            lambda: _query(prom.url, 'spanomaly_records_rejected_total{signal="spans"}'),
        )
        assert got[0]["value"][1] == "2"
        stored = _query(prom.url, 'spanomaly_rows_stored_total{table="spans"}')
        assert stored and float(stored[0]["value"][1]) == 48


FAULTS = """
[[fault]]
kind = "code_delay"
target = "movies-1"
at = 95
duration = 30
p = 1.0
ms = 300
"""


@needs_alertmanager
def test_a_testbed_fault_fires_in_alertmanager_then_resolves(
    serve: StartServer, tmp_path: Path
) -> None:
    """Normal load, a model trained online on it, then a delay on one instance: Alertmanager
    shows the incident active and notifies its receiver firing, then resolved."""
    (tmp_path / "faults.toml").write_text(FAULTS)
    with hook_server() as hook, alertmanager(tmp_path, hook.url) as am:
        server = serve(
            "--model", str(tmp_path / "model"), "--alertmanager", am.url, "--incident-gap", "10"
        )
        began = time.time()
        argv = [sys.executable, "-m", "spanomaly", "testbed", "run", "--collector", server.url,
                "--faults", "faults.toml", "--minutes", "3.3", "--out", str(tmp_path / "run")]  # fmt: skip
        with (tmp_path / "testbed.log").open("wb") as err:
            load = subprocess.Popen(
                argv, cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=err
            )
        seen: list[dict[str, Any]] = []
        resolved = threading.Event()  # the receiver got the fault's resolve: stop watching
        watch = threading.Thread(target=_watch, args=(am.url, seen, resolved), daemon=True)
        watch.start()
        try:
            time.sleep(max(0.0, began + 50 - time.time()))
            retrain = {"from": str(began + 12), "to": str(time.time()), "point_window_s": 5,
                       "target_fpr": 1e-4, "point_target_fpr": 1e-3}  # fmt: skip
            r = httpx.post(server.url + "/api/model/retrain", json=retrain, timeout=300)
            assert r.status_code == 200, r.text
            assert load.wait(timeout=400) == 0, (tmp_path / "testbed.log").read_text()[-3000:]
            waited = time.monotonic() + 90  # for the resolve; the asserts below say what came
            while not _resolved(hook.got) and time.monotonic() < waited:
                time.sleep(1)
            resolved.set()
        finally:
            if load.poll() is None:
                load.kill()
            resolved.set()
        watch.join(timeout=60)
        movies = [a for a in seen if a["labels"]["service"] == "movies"]
        assert movies, f"no alert on movies in Alertmanager; saw {[a['labels'] for a in seen]}"
        # the fault's incident (an earlier false alarm on the service would be one of its own)
        ours = [a for a in movies if a["labels"]["instance"] == "movies-1"]
        assert ours, [a["labels"] for a in movies]
        assert ours[0]["labels"]["alertname"] == "SpanomalyIncident"
        assert ours[0]["annotations"]["suspects"].startswith("1. movies/movies-1")
        notes = [json.loads(body) for _, body in hook.got]
        states = [(a["status"], a["labels"]["service"], a["labels"]["instance"])
                  for n in notes for a in n["alerts"]]  # fmt: skip
        assert ("firing", "movies", "movies-1") in states, states
        assert ("resolved", "movies", "movies-1") in states, states
        active = httpx.get(am.url + "/api/v2/alerts", timeout=10).json()
        gone = ours[0]["labels"]["incident"]
        assert not [a for a in active if a["labels"]["incident"] == gone]  # resolved there too
        incidents = server.get("/api/incidents").json()
        assert incidents["receivers"]["alertmanager"]["failed"] == 0


def _resolved(got: list[tuple[Any, bytes]]) -> bool:
    """Whether the receiver was told the fault's incident resolved."""
    return any(
        a["status"] == "resolved" and a["labels"].get("instance") == "movies-1"
        for _, body in got
        for a in json.loads(body)["alerts"]
    )


def _watch(am: str, seen: list[dict[str, Any]], done: threading.Event) -> None:
    """Keep every active alert Alertmanager's API shows until the fault's incident is
    resolved (an incident ends its gap and lateness after its last finding)."""
    while not done.is_set():
        try:
            for a in httpx.get(am + "/api/v2/alerts", timeout=5).json():
                if a["status"]["state"] == "active" and a["fingerprint"] not in {
                    s["fingerprint"] for s in seen
                }:
                    seen.append(a)
        except httpx.HTTPError:
            pass
        time.sleep(1)
