"""Alert receivers (serve.receivers): the webhook's body, signature, retries and a dead
receiver; Alertmanager's postable alerts. The Alertmanager round trip itself, with the
real server, is in test_monitoring_stack.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from spanomaly.serve.incidents import Incident
from spanomaly.serve.receivers import Alertmanager, Webhook, alert, sign
from tests.serve.stack import Hook, hook_server

S = 1_000_000_000


@pytest.fixture
def hook() -> Iterator[Hook]:
    with hook_server() as server:
        yield server


def _incident(resolved: bool = False) -> Incident:
    return Incident(id="abc", service="movies", instance="movies-1", kind="trace", start_ns=100 * S,
                    end_ns=160 * S, findings=4, max_ratio=2.5, reasons=["slow /movies"],
                    instances={"movies-1": 4}, suspects=[{"rank": 1, "service": "movies",
                    "instance": "movies-1", "score": 0.9}], resolved=resolved)  # fmt: skip


def _wait(cond: object, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_webhook_posts_signed_json_and_retries_with_backoff(hook: Hook) -> None:
    hook.fail = [500, 503]
    w = Webhook(hook.url, secret="s3cret", backoff_s=0.01)
    w.start()
    w.send([_incident()], "http://dash:4318", 170 * S)
    _wait(lambda: w.delivery.sent == 1)
    w.stop()
    assert w.delivery.retries == 2 and w.delivery.failed == 0 and len(hook.got) == 3
    headers, body = hook.got[-1]
    assert headers["x-spanomaly-signature"] == "sha256=" + sign(
        "s3cret", headers["x-spanomaly-timestamp"], body
    )
    doc = json.loads(body)
    (inc,) = doc["incidents"]
    assert (
        inc["status"] == "firing" and inc["service"] == "movies" and inc["severity"] == "critical"
    )
    assert inc["suspects"][0]["instance"] == "movies-1" and doc["dashboard"] == "http://dash:4318"


def test_a_refused_message_is_not_sent_again_and_a_dead_receiver_is_counted(hook: Hook) -> None:
    hook.fail = [400]
    w = Webhook(hook.url, backoff_s=0.01)
    w.start()
    w.send([_incident()], None, 0)
    _wait(lambda: w.delivery.failed == 1)
    w.stop()
    assert len(hook.got) == 1 and w.delivery.retries == 0 and "400" in (w.delivery.last_error or "")
    assert "x-spanomaly-signature" not in hook.got[0][0]  # no secret, no signature

    dead = Webhook("http://127.0.0.1:9/nobody", backoff_s=0.01)  # port 9: nothing listens
    dead.start()
    for _ in range(1500):  # more than its queue holds: sending never waits
        dead.send([_incident()], None, 0)
    assert dead.delivery.dropped > 0
    _wait(lambda: dead.delivery.failed >= 1)
    dead.stop(wait_s=0.5)


def test_alertmanager_alerts_name_the_incident_and_end_as_it_does() -> None:
    am = Alertmanager("http://am:9093/")
    assert am.url == "http://am:9093/api/v2/alerts"
    firing = alert(_incident(), "http://dash:4318", 170 * S, expire_s=300)
    assert firing["labels"] == {"alertname": "SpanomalyIncident", "service": "movies", "instance": "movies-1",
                                "kind": "trace", "severity": "critical", "incident": "abc"}  # fmt: skip
    assert firing["endsAt"].startswith("1970-01-01T00:07:50")  # sent + 300 s
    assert "1. movies/movies-1" in firing["annotations"]["suspects"]
    assert firing["generatorURL"].startswith("http://dash:4318/#/anomalies?service=movies")
    resolved = alert(_incident(resolved=True), None, 900 * S, expire_s=300)
    assert resolved["endsAt"].startswith("1970-01-01T00:02:40")  # its last finding
    assert "generatorURL" not in resolved
    am.stop()
