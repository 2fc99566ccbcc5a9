"""Where incidents go: Alertmanager's API v2 and a signed JSON webhook.

Each receiver has a thread and a bounded queue of its own, so a slow or dead receiver
holds up nothing but itself: a full queue drops its oldest message (counted), a request
that fails is retried with exponential backoff and then counted as failed.

Webhook signature: ``X-Spanomaly-Signature: sha256=<hex>``, the HMAC-SHA256 with the secret
of ``<X-Spanomaly-Timestamp>.<body>`` (the timestamp, unix seconds, makes a replayed
message tell-tale old).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx

from spanomaly.serve.incidents import Incident
from spanomaly.timeparse import iso

log = logging.getLogger(__name__)

ALERTNAME = "SpanomalyIncident"
QUEUE_SIZE = 1000
RETRIES = 4  # after the first try
BACKOFF_S = 0.5  # doubled after each failed try, at most BACKOFF_MAX_S
BACKOFF_MAX_S = 8.0
TIMEOUT_S = 5.0


@dataclass
class Delivery:
    """What a receiver did: messages sent, failed after every retry, dropped unsent."""

    sent: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0
    last_error: str | None = None


@dataclass
class Receiver:
    """A queue and a thread posting its messages to url (subclasses say what they post)."""

    url: str
    name: str = "receiver"
    delivery: Delivery = field(default_factory=Delivery)
    backoff_s: float = BACKOFF_S

    def __post_init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=TIMEOUT_S)
        self._abandon = threading.Event()

    def start(self) -> None:
        """Start posting."""
        self._thread = threading.Thread(
            target=self._run, name=f"spanomaly-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, wait_s: float = 5.0) -> None:
        """Post what is queued for at most wait_s, then give the rest up and stop."""
        if self._thread is None:
            self._client.close()
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=wait_s)
        self._thread.join(wait_s)
        self._abandon.set()  # what is left is counted as dropped
        self._thread.join()  # at most the request under way (TIMEOUT_S)
        self._thread = None

    def send(self, incidents: list[Incident], dashboard: str | None, now_ns: int) -> None:
        """Queue a message about incidents (never blocks: a full queue drops its oldest)."""
        if not incidents:
            return
        body = self.encode(incidents, dashboard, now_ns)
        while True:
            try:
                self._queue.put_nowait(body)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
                    self.delivery.dropped += 1

    def encode(self, incidents: list[Incident], dashboard: str | None, now_ns: int) -> bytes:
        """The request body of one message."""
        raise NotImplementedError

    def headers(self, body: bytes) -> dict[str, str]:
        """The request headers of one message."""
        return {"content-type": "application/json"}

    def _run(self) -> None:
        try:
            while not self._abandon.is_set():
                try:
                    body = self._queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                if body is None:
                    break
                self._post(body)
            self.delivery.dropped += self._queue.qsize()
        finally:
            self._client.close()

    def _post(self, body: bytes) -> None:
        wait = self.backoff_s
        for attempt in range(RETRIES + 1):
            try:
                r = self._client.post(self.url, content=body, headers=self.headers(body))
                if r.status_code < 300:
                    self.delivery.sent += 1
                    return
                error = f"{r.status_code} {r.text[:200]}"
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                    break  # the receiver refuses this message: no use sending it again
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt == RETRIES or self._abandon.wait(wait):
                break
            self.delivery.retries += 1
            wait = min(wait * 2, BACKOFF_MAX_S)
        self.delivery.failed += 1
        self.delivery.last_error = error
        log.warning("%s %s: message not delivered: %s", self.name, self.url, error)


@dataclass
class Alertmanager(Receiver):
    """Posts incidents to Alertmanager's `POST /api/v2/alerts`; a firing alert ends
    `expire_s` after it is sent unless sent again, a resolved one at its last finding."""

    name: str = "alertmanager"
    expire_s: float = 300.0

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/") + "/api/v2/alerts"
        super().__post_init__()

    def encode(self, incidents: list[Incident], dashboard: str | None, now_ns: int) -> bytes:
        """Alertmanager's list of postable alerts."""
        return json.dumps([alert(i, dashboard, now_ns, self.expire_s) for i in incidents]).encode()


def alert(
    incident: Incident, dashboard: str | None, now_ns: int, expire_s: float
) -> dict[str, Any]:
    """One postable alert: labels name it (fixed for the incident), annotations explain it."""
    i = incident
    ends = i.end_ns + 1 if i.resolved else now_ns + int(expire_s * 1e9)
    doc: dict[str, Any] = {
        "labels": {
            "alertname": ALERTNAME,
            "service": i.service,
            "instance": i.instance,
            "kind": i.kind,
            "severity": i.severity,
            "incident": i.id,
        },
        "annotations": {
            "summary": summary(i),
            "reason": i.reasons[0] if i.reasons else "",
            "reasons": "\n".join(i.reasons),
            "suspects": suspects_text(i.suspects),
        },
        "startsAt": iso(i.start_ns),
        "endsAt": iso(ends),
    }
    if dashboard:
        q = urlencode({"service": i.service, "from": i.start_ns / 1e9, "to": i.end_ns / 1e9 + 1})
        link = f"{dashboard.rstrip('/')}/#/anomalies?{q}"
        doc["annotations"]["dashboard"] = link
        doc["generatorURL"] = link
    return doc


def summary(i: Incident) -> str:
    """One line: what, where, how long."""
    seconds = (i.end_ns - i.start_ns) / 1e9
    where = ", ".join(sorted(i.instances)[:3]) or i.instance
    return f"{i.findings} anomalous findings on {i.service} ({where}) over {seconds:.0f} s"


def suspects_text(suspects: list[dict[str, Any]]) -> str:
    """The ranking's top suspects as one line each: rank. service/instance (score)."""
    return "\n".join(
        f"{s.get('rank')}. {s.get('service')}/{s.get('instance') or '*'} ({float(s.get('score') or 0):.3g})"
        for s in suspects
    )


@dataclass
class Webhook(Receiver):
    """Posts {"incidents": [...]} as JSON, HMAC-signed with secret where one is given."""

    name: str = "webhook"
    secret: str | None = None

    def encode(self, incidents: list[Incident], dashboard: str | None, now_ns: int) -> bytes:
        """The incidents' JSON (`Incident.to_json`), with the dashboard link and send time."""
        return json.dumps(
            {
                "version": 1,
                "sent": iso(now_ns),
                "dashboard": dashboard,
                "incidents": [i.to_json() for i in incidents],
            }
        ).encode()

    def headers(self, body: bytes) -> dict[str, str]:
        """Content type, and the timestamp and signature where there is a secret."""
        out = {"content-type": "application/json"}
        if self.secret:
            stamp = str(int(time.time()))
            out["x-spanomaly-timestamp"] = stamp
            out["x-spanomaly-signature"] = "sha256=" + sign(self.secret, stamp, body)
        return out


def sign(secret: str, stamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of `<stamp>.<body>` with secret (how a receiver checks one)."""
    return hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
