"""The report's figures as inline SVG (matplotlib, Agg): no file, no network, no script.

Every function takes Arrow tables or plain lists and returns one ``<svg>`` string; the
HTML assembly (`spanomaly.report.html`) places them. Times on the axes are seconds from
the report period's start.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_NS = 1e9
FAULT_COLOUR = "#f4a261"
ALARM_COLOUR = "#d62828"
NORMAL_COLOUR = "#2a9d8f"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 8,
            "axes.titlesize": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "svg.fonttype": "none",  # text stays text: searchable, small
            "svg.hashsalt": "spanomaly",  # stable ids: the same data gives the same file
        }
    )
    return plt


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _plt().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _shade(ax: Any, faults: list[dict[str, Any]], t0: int, highlight: str | None = None) -> None:
    for f in faults:
        strong = highlight is not None and f["service"] == highlight
        ax.axvspan(
            (f["start_ns"] - t0) / _NS,
            (f["end_ns"] - t0) / _NS,
            color=FAULT_COLOUR,
            alpha=0.45 if strong else 0.12,
            lw=0,
        )


def timelines(
    services: list[str],
    findings: pa.Table,
    faults: list[dict[str, Any]],
    rate: pa.Table,
    t0: int,
    t1: int,
) -> str:
    """Per service: request rate, and findings as score / threshold over time, with the
    fault windows shaded (darker on the faulty service) and detections marked."""
    plt = _plt()
    n = max(len(services), 1)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.15 * n + 0.6), sharex=True, squeeze=False)
    for ax, svc in zip(axes[:, 0], services, strict=False):
        _shade(ax, faults, t0, svc)
        r = rate.filter(pc.equal(rate.column("service"), svc))
        if r.num_rows:
            ax2 = ax.twinx()
            ax2.plot(
                (r.column("bucket_ns").to_numpy() - t0) / _NS,
                r.column("p95_ms").to_numpy(zero_copy_only=False),
                color="#8d99ae",
                lw=0.8,
            )
            ax2.set_ylabel("p95 ms", fontsize=6, color="#8d99ae")
            ax2.tick_params(labelsize=6, colors="#8d99ae")
            ax2.spines["top"].set_visible(False)
        f = findings.filter(pc.equal(findings.column("service"), svc))
        if f.num_rows:
            t = (f.column("time_ns").to_numpy() - t0) / _NS
            thr = np.asarray(f.column("threshold").to_numpy(zero_copy_only=False), dtype=float)
            sc = np.asarray(f.column("score").to_numpy(zero_copy_only=False), dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(np.isfinite(thr) & (thr > 0), sc / thr, 2.0)
            trace = np.asarray(
                pc.equal(f.column("entity"), "trace")
                .fill_null(False)
                .to_numpy(zero_copy_only=False),
                dtype=bool,
            )
            ax.scatter(t[trace], rel[trace], s=9, color=ALARM_COLOUR, label="trace", zorder=3)
            ax.scatter(
                t[~trace], rel[~trace], s=14, marker="s", color="#6a4c93", label="window", zorder=3
            )
        for fault in faults:
            if fault["service"] == svc and fault.get("first_detection_ns"):
                ax.axvline((fault["first_detection_ns"] - t0) / _NS, color="black", lw=1, ls="--")
        ax.set_yscale("log")
        ax.set_ylim(0.8, 200)
        ax.axhline(1, color="#adb5bd", lw=0.6)
        ax.set_ylabel(svc, rotation=0, ha="right", va="center", fontsize=8)
    axes[-1, 0].set_xlim(0, (t1 - t0) / _NS)
    axes[-1, 0].set_xlabel("seconds from the start of the period")
    axes[0, 0].set_title(
        "score / threshold of findings (dots: traces, squares: instance windows; log scale), "
        "p95 latency (grey); fault windows shaded, dashed: first detection"
    )
    return _svg(fig)


def confusion(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str) -> str:
    """A confusion matrix with counts in the cells."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(0.55 * len(cols) + 2.2, 0.45 * len(rows) + 1.2))
    ax.imshow(matrix, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    peak = matrix.max() if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(int(v)), ha="center", va="center",
                color="white" if peak and v > peak / 2 else "black")  # fmt: skip
    ax.set_title(title)
    return _svg(fig)


def _layers(nodes: list[str], edges: list[tuple[str, str]]) -> dict[str, tuple[float, float]]:
    """Positions: callers left of callees (longest path from a root), spread vertically."""
    depth = dict.fromkeys(nodes, 0)
    for _ in range(len(nodes)):
        changed = False
        for a, b in edges:
            if a != b and depth[b] < depth[a] + 1 and depth[a] + 1 < len(nodes):
                depth[b] = depth[a] + 1
                changed = True
        if not changed:
            break
    pos = {}
    for d in sorted(set(depth.values())):
        col = sorted(n for n in nodes if depth[n] == d)
        for k, n in enumerate(col):
            pos[n] = (float(d), (k - (len(col) - 1) / 2) * 1.0)
    return pos


def service_graph(
    graph: pa.Table,
    anomaly: dict[str, float],
    instances: dict[str, int],
    red: Sequence[bool] | None = None,
    title: str = "service dependency graph: colour = findings blamed on the service",
) -> str:
    """The service dependency graph; node colour: share of the service's findings
    (0 white, most anomalous red); edge width: calls; edges flagged in red drawn red."""
    plt = _plt()
    edges = [
        (a, b)
        for a, b in zip(graph.column("caller").to_pylist(), graph.column("callee").to_pylist(),
                        strict=True)
    ]  # fmt: skip
    calls = graph.column("calls").to_numpy(zero_copy_only=False).astype(float)
    nodes = sorted({n for e in edges for n in e} | set(anomaly) | set(instances))
    pos = _layers(nodes, edges)
    width = max(v[0] for v in pos.values()) + 1 if pos else 1
    height = max((abs(v[1]) for v in pos.values()), default=1) * 2 + 1
    fig, ax = plt.subplots(figsize=(max(4.0, 2.4 * width), max(2.5, 0.8 * height)))
    top = max(calls.max() if len(calls) else 1, 1)
    flags = list(red) if red is not None else [False] * len(edges)
    for (a, b), c, hot in zip(edges, calls, flags, strict=True):
        if a == b:
            continue
        (x0, y0), (x1, y1) = pos[a], pos[b]
        colour = ALARM_COLOUR if hot else "#6c757d"
        ax.annotate(
            "",
            xy=(x1 - 0.18, y1),
            xytext=(x0 + 0.18, y0),
            arrowprops={"arrowstyle": "->", "lw": 0.5 + 2.5 * c / top, "color": colour},
        )
    cmap = plt.get_cmap("Reds")
    peak = max(anomaly.values(), default=0) or 1
    for n in nodes:
        x, y = pos[n]
        share = anomaly.get(n, 0.0) / peak
        ax.scatter([x], [y], s=900, color=cmap(0.08 + 0.85 * share), edgecolors="#343a40", zorder=3)
        ax.text(x, y - 0.33, f"{n}\n{instances.get(n, 0)} inst.", ha="center", va="top", fontsize=7)
    ax.set_axis_off()
    ax.set_xlim(-0.6, width - 0.4)
    ax.set_ylim(-height / 2 - 0.6, height / 2 + 0.3)
    ax.set_title(title)
    return _svg(fig)


def waterfall(spans: pa.Table, deviating: str | None, title: str) -> str:
    """One trace as a waterfall: a bar per span from its start for its duration, indented
    by depth; the deviating span in red."""
    plt = _plt()
    rows = spans.sort_by("start_ns").to_pylist()
    parent = {r["span_id"]: r["parent_id"] for r in rows}

    def depth(sid: str) -> int:
        d, seen = 0, set()
        while parent.get(sid) in parent and sid not in seen:
            seen.add(sid)
            sid = parent[sid]
            d += 1
        return d

    t0 = min(r["start_ns"] for r in rows)
    fig, ax = plt.subplots(figsize=(9, 0.24 * len(rows) + 0.8))
    for k, r in enumerate(rows):
        hit = r["span_id"] == deviating
        colour = ALARM_COLOUR if hit else ("#e76f51" if r["status"] == "error" else NORMAL_COLOUR)
        start, dur = (r["start_ns"] - t0) / 1e6, max(r["duration_ns"] / 1e6, 0.05)
        ax.barh(k, dur, left=start, color=colour, height=0.7)
        label = f"{'· ' * depth(r['span_id'])}{r['service']}: {r['operation']}"
        ax.text(-0.01, k, label, transform=ax.get_yaxis_transform(), ha="right", va="center",
                fontsize=7, fontweight="bold" if hit else "normal")  # fmt: skip
        ax.text(start + dur, k, f" {dur:.1f} ms", va="center", fontsize=6)
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlabel("ms from the trace start")
    ax.set_title(title)
    return _svg(fig)


def instance_metrics(
    points: pa.Table, fault: dict[str, Any], names: list[str], before_s: float
) -> str:
    """Metrics of the faulty instance around the fault, the fault window shaded."""
    plt = _plt()
    t0 = int(fault["start_ns"] - before_s * _NS)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(2.6 * max(len(names), 1), 1.8),
                             squeeze=False)  # fmt: skip
    for ax, name in zip(axes[0], names, strict=False):
        p = points.filter(pc.equal(points.column("name"), name)).sort_by("time_ns")
        ax.plot((p.column("time_ns").to_numpy() - t0) / _NS, p.column("value").to_numpy(),
                color="#264653", lw=1)  # fmt: skip
        _shade(ax, [fault], t0, fault["service"])
        ax.set_title(name, fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{fault['instance'] or fault['service']} ({fault['kind']})", fontsize=8)
    return _svg(fig)


def details_line(details: str | None) -> str:
    """The explanation of a trace finding in one line: expected versus observed."""
    if not details:
        return ""
    try:
        doc = json.loads(details)
    except ValueError:
        return ""
    parts = []
    seq = doc.get("sequence") or {}
    if seq.get("expected"):
        parts.append(f"expected one of {', '.join(map(str, seq['expected'][:3]))}")
    dur = doc.get("duration") or {}
    if dur:
        parts.append(
            ", ".join(f"{k} {v}" for k, v in dur.items() if isinstance(v, int | float | str))
        )
    return "; ".join(parts)
