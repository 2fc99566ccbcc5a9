"""The collector's incidents and alerts: new findings read from the store, grouped into
incidents (`serve.incidents`), and sent to the receivers (`serve.receivers`).

A thread of its own, on a cursor of its own, reads the findings stored since it last
looked every `interval_s`; ingest never waits for it. A new or grown incident gets the
ranking's top suspects (`Online.suspects`) and is sent; Alertmanager hears every active
incident again each `resend_s` (an alert not sent again expires) and the webhook hears
each change; an incident ends `gap_s` after its last finding (plus the lateness of window
findings) and is sent resolved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.serve.hooks import Online
from spanomaly.serve.incidents import DEFAULT_GAP_S, Incident, Incidents
from spanomaly.serve.receivers import Receiver
from spanomaly.store.base import Store

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 2.0
DEFAULT_RESEND_S = 60.0
SUSPECTS = 3


class Alerting:
    """Reads new findings, keeps the incidents, sends them to the receivers."""

    def __init__(
        self,
        online: Online | None,
        receivers: list[Receiver],
        dashboard: str | None = None,
        gap_s: float = DEFAULT_GAP_S,
        late_s: float = 0.0,
        interval_s: float = DEFAULT_INTERVAL_S,
        resend_s: float = DEFAULT_RESEND_S,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.online = online
        self.receivers = receivers
        self.dashboard = dashboard
        self.incidents = Incidents(gap_s, late_s)
        self.interval_s = interval_s
        self.resend_ns = int(resend_s * 1e9)
        self.clock = clock
        # findings are read this far back (a window's finding comes after its window)
        self.lookback_ns = int((gap_s + late_s + 600) * 1e9)
        self._seen: dict[str, int] = {}  # finding id -> time, within the lookback
        self._sent_ns = 0
        self._cursor: Store | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self, store: Store) -> None:
        """Start reading findings of store (with a cursor of its own) and the receivers."""
        self._cursor = store.cursor()
        self._new_findings(self.clock())  # what is stored already is not new
        for r in self.receivers:
            r.start()
        self._thread = threading.Thread(target=self._run, name="spanomaly-alerts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """One last round, then stop (queued messages get a few seconds to go out)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        if self._cursor is not None:
            self._round()
            cursor, self._cursor = self._cursor, None
            cursor.close()
        for r in self.receivers:
            r.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._round()
            except Exception:  # one failed round must not end alerting
                self.errors += 1
                log.exception("alerting round failed; going on")

    def _round(self) -> None:
        now = self.clock()
        changed = self.incidents.add(self._new_findings(now))
        for incident in changed:
            self._rank(incident)
        resolved = self.incidents.expire(now)
        resolved += [i for i in changed if i.resolved]  # ended inside what came late
        for r in self.receivers:
            due = now - self._sent_ns >= self.resend_ns and r.name == "alertmanager"
            firing = (
                list(self.incidents.open.values())
                if due
                else [i for i in changed if not i.resolved]
            )
            r.send(firing + resolved, self.dashboard, now)
        for incident in changed:
            incident.announced = True  # its labels are fixed from now on
        if now - self._sent_ns >= self.resend_ns:
            self._sent_ns = now

    def _new_findings(self, now_ns: int) -> pa.Table:
        assert self._cursor is not None
        since = now_ns - self.lookback_ns
        found = self._cursor.sql("SELECT * FROM findings WHERE time_ns >= ?", [since])
        if self._seen:
            seen = pa.array(list(self._seen), pa.string())
            found = found.filter(pc.invert(pc.is_in(found.column("finding_id"), seen)))
        self._seen = {k: t for k, t in self._seen.items() if t >= since}
        times = found.column("time_ns").to_pylist()
        self._seen.update(zip(found.column("finding_id").to_pylist(), times, strict=True))
        return found

    def _rank(self, incident: Incident) -> None:
        if self.online is None:
            return
        try:
            incident.suspects = self.online.suspects(
                incident.start_ns, incident.end_ns + 1, SUSPECTS
            )
        except Exception:  # an incident without suspects is still sent
            self.errors += 1
            log.exception("ranking the suspects of %s failed", incident.service)
            return
        if not incident.announced:  # the label names the ranking's instance of the service
            ranked = [s for s in incident.suspects if s.get("service") == incident.service]
            if ranked and ranked[0].get("instance"):
                incident.instance = str(ranked[0]["instance"])

    def status(self) -> dict[str, Any]:
        """Open incidents and what each receiver did (GET /api/incidents)."""
        return {
            "open": [i.to_json() for i in self.incidents.open.values()],
            "opened": self.incidents.opened,
            "resolved": self.incidents.resolved,
            "errors": self.errors,
            "receivers": {r.name: {"url": r.url, **vars(r.delivery)} for r in self.receivers},
        }
