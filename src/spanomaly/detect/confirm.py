"""Confirmation of evidence: a finding from traces or metrics stands only when its instance
has findings at other moments nearby.

Why: a fault lasts; a single slow call, or a stall of the whole host (a garbage collection,
a checkpoint, a noisy neighbour) that slows every request in flight for a second, does not.
Both pass any per-trace threshold, and each would page someone. So a finding from traces
(a trace, or an instance window of trace features) is kept when findings of the same
instance (any detector) lie at other moments at least `gap_s` and at most `within_s` away
from it: a trace's finding needs two such moments, themselves `gap_s` apart (three in
all, so that two chance blips do not confirm each other); a window's finding, which
spans time itself, needs one. So does a window of metrics: one window of a burst of disk
reads is no fault either; its partner must be another window (an alert rule's "for two
intervals"), since a stall of the host moves the metrics and slows a call in the same
second. Findings from log windows stand alone (an error logged is evidence enough). A
confirmed finding keeps its own time, so time to detect still counts from the first
anomalous event.

Partners must also belong to the same run of evidence: findings of the instance no further
apart than `link_s` (a window's finding covers its window), with nothing longer than that
between them. A fault shows on every few requests; a lone slow call, a quiet stretch and
then the start of an unrelated fault are two events, and the fault must not confirm the
blip before it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanomaly.schema import FINDINGS

CONFIRM_GAP_S = 2.0  # longer than a stall of the host (about a second here)
CONFIRM_WITHIN_S = 10.0  # at least: two instance windows, where they are longer


def confirm_within(window_s: float | None) -> float:
    """How far a partner may lie: 10 s, or two instance windows (the next window's finding
    lies one window away, a trace in it up to two)."""
    return max(CONFIRM_WITHIN_S, 2.0 * (window_s or 0.0))


def confirm_link(gap_s: float, window_s: float | None) -> float:
    """The longest quiet stretch inside one run of evidence: the gap, or half a window
    (windows are the detectors' resolution; a lasting fault shows in every one)."""
    return max(gap_s, 0.5 * (window_s or 0.0))


STANDALONE_SOURCES = (":logs",)  # detector suffixes of window findings that stand alone


def _detector_ends(findings: pa.Table, suffixes: tuple[str, ...]) -> np.ndarray:
    """Rows whose detector name ends with one of suffixes."""
    detector = findings.column("detector")
    out = np.zeros(findings.num_rows, dtype=bool)
    for suffix in suffixes:
        out |= pc.fill_null(pc.ends_with(detector, suffix), False).to_numpy(zero_copy_only=False)
    return out


def needs_confirmation(findings: pa.Table) -> np.ndarray:
    """Rows that need partners: all but log windows."""
    return ~_detector_ends(findings, STANDALONE_SOURCES)


def from_metrics(findings: pa.Table) -> np.ndarray:
    """Rows that are windows of metrics."""
    return _detector_ends(findings, (":metrics",))


def moments_needed(findings: pa.Table) -> np.ndarray:
    """Other moments a finding needs: 2 for a trace, 1 for a window (it spans time itself)."""
    window = pc.fill_null(pc.equal(findings.column("entity"), "instance"), False)
    return np.where(window.to_numpy(zero_copy_only=False), 1, 2)


def runs(time_ns: np.ndarray, keys: np.ndarray, span_ns: np.ndarray, link_ns: int) -> np.ndarray:
    """A run number per row: rows of one key whose covered times [time - span, time] are
    no more than link_ns apart, chained, share one; runs of different keys never do."""
    n = len(time_ns)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    codes = np.unique(keys, return_inverse=True)[1].astype(np.int64)
    end = time_ns.astype(np.int64)
    start = end - span_ns.astype(np.int64)
    order = np.lexsort((start, codes))
    c, s, e = codes[order], start[order], end[order]
    new = np.ones(n, dtype=bool)
    for lo, hi in _key_bounds(c):  # per key: the latest end so far, against the next start
        reach = np.maximum.accumulate(e[lo:hi])
        new[lo + 1 : hi] = s[lo + 1 : hi] > reach[:-1] + link_ns
    out = np.empty(n, dtype=np.int64)
    out[order] = np.cumsum(new) - 1
    return out


def _key_bounds(sorted_codes: np.ndarray) -> list[tuple[int, int]]:
    """(first, past-last) row of each key in codes sorted by key."""
    edges = np.flatnonzero(np.diff(sorted_codes)) + 1
    bounds = np.concatenate([[0], edges, [len(sorted_codes)]])
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def partnered(
    time_ns: np.ndarray, keys: np.ndarray, gap_ns: int, within_ns: int, moments: np.ndarray
) -> np.ndarray:
    """True where rows with the same key lie between gap_ns and within_ns away, at one other
    moment (moments 1) or two (2: themselves gap_ns apart, before and after or spread)."""
    n = len(time_ns)
    if n == 0:
        return np.zeros(0, dtype=bool)
    codes = np.unique(keys, return_inverse=True)[1].astype(np.int64)
    t = time_ns.astype(np.int64) - int(time_ns.min())
    stride = int(t.max()) + within_ns + 1  # keys' runs never come within reach of each other
    if int(codes.max()) * stride >= 2**62:  # years of many keys: one key at a time
        out = np.zeros(n, dtype=bool)
        for code in np.unique(codes):
            rows = codes == code
            one = np.zeros(int(rows.sum()), dtype=np.int64)
            out[rows] = partnered(time_ns[rows], one, gap_ns, within_ns, moments[rows])
        return out
    key = codes * stride + t
    ranked = np.sort(key)
    last = n - 1
    # partners after: ranked[a0:a1], in [t + gap, t + within]; before: ranked[b0:b1]
    a0 = np.searchsorted(ranked, key + gap_ns, side="left")
    a1 = np.searchsorted(ranked, key + within_ns, side="right")
    b0 = np.searchsorted(ranked, key - within_ns, side="left")
    b1 = np.searchsorted(ranked, key - gap_ns, side="right")
    after, before = a1 > a0, b1 > b0
    first = np.where(before, ranked[np.minimum(b0, last)], ranked[np.minimum(a0, last)])
    latest = np.where(after, ranked[np.maximum(a1 - 1, 0)], ranked[np.maximum(b1 - 1, 0)])
    return (after | before) & ((moments < 2) | (latest - first >= gap_ns))


class Confirmer:
    """Holds findings from traces until confirmed; pass every finding through `push`.

    `push` returns what may be stored now: findings that stand alone, and held ones that
    the new findings confirm (or that confirm each other). Findings arrive out of order
    (a window is scored after its grace time), so held and passed findings are kept as
    partners until they are `keep_s` older than the newest one; None keeps them all (a
    batch run, where the result must not depend on the order of pushes).
    """

    def __init__(
        self,
        gap_s: float = CONFIRM_GAP_S,
        within_s: float | None = None,
        keep_s: float | None = None,
        window_s: float | None = None,
    ) -> None:
        self.gap_s = gap_s
        self.keep_s = keep_s
        self.set_window(window_s, within_s)
        self._seen: pa.Table | None = None  # recent findings, passed or held
        self._passed = np.zeros(0, dtype=bool)
        self.dropped = 0  # held findings that no partner came for in time

    def set_window(self, window_s: float | None, within_s: float | None = None) -> None:
        """The instance windows' length (what a window's finding covers, before its time)
        and the reach of partners: within_s, else `confirm_within` of the window."""
        self.window_s = window_s
        self.within_s = confirm_within(window_s) if within_s is None else within_s

    @property
    def enabled(self) -> bool:
        """False when gap_s is 0: every finding passes at once."""
        return self.gap_s > 0

    def push(self, findings: pa.Table) -> pa.Table:
        """Take new findings; return those to store now."""
        if not self.enabled or findings.num_rows == 0:
            return findings
        findings = findings.select(FINDINGS.names).cast(FINDINGS)
        seen = findings if self._seen is None else pa.concat_tables([self._seen, findings])
        passed = np.concatenate([self._passed, np.zeros(findings.num_rows, dtype=bool)])
        time_ns = seen.column("time_ns").to_numpy(zero_copy_only=False)
        blamed = pc.coalesce(seen.column("instance"), seen.column("service"), pa.scalar(""))
        moments = moments_needed(seen)
        run = runs(
            time_ns,
            np.asarray(blamed.to_numpy(zero_copy_only=False)),
            np.where(moments == 1, int((self.window_s or 0.0) * 1e9), 0),
            int(confirm_link(self.gap_s, self.window_s) * 1e9),
        )
        gap_ns, within_ns = int(self.gap_s * 1e9), int(self.within_s * 1e9)
        ok = partnered(time_ns, run, gap_ns, within_ns, moments)
        # a metric window is confirmed by the next window (of any source), not by a slow call:
        # a stall of the host shows in both, in the same second
        window = moments == 1
        by_windows = np.zeros(len(ok), dtype=bool)
        by_windows[window] = partnered(
            time_ns[window], run[window], gap_ns, within_ns, moments[window]
        )
        ok = np.where(from_metrics(seen), by_windows, ok) | ~needs_confirmation(seen)
        out = seen.filter(pa.array(ok & ~passed))
        passed |= ok
        if self.keep_s is not None:
            recent = time_ns >= int(time_ns.max()) - int(self.keep_s * 1e9)
            self.dropped += int((~recent & ~passed).sum())
            seen, passed = seen.filter(pa.array(recent)), passed[recent]
        self._seen, self._passed = seen, passed
        return out

    @property
    def held(self) -> int:
        """Findings held back now, waiting for a partner."""
        return int((~self._passed).sum())
