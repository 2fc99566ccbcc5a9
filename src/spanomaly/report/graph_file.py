"""The service graph of `spanomaly graph` as a file: HTML, SVG or Graphviz DOT.

The HTML page draws the graph with the dashboard's own script and style (`static/graph.js`,
`static/graph.css`, served to the dashboard as /static/graph/), inlined with the data so the
page works offline from a file. The SVG is the report's figure (`plots.service_graph`); the
DOT text is for Graphviz and other graph tools. Everywhere the edge width is the calls, a red
edge has errors (or findings, when a model scored the spans) and a node is as red as its
error share (or its findings).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa

from spanomaly.features.graph import error_anomaly, findings_anomaly
from spanomaly.report import plots

GRAPH_OUTPUTS = (".html", ".svg", ".dot")
_STATIC = resources.files("spanomaly.report") / "static"
_NS = 1e9
_PAGE_CSS = """:root { --bg: #f6f7f9; --fg: #1d2330; --muted: #667085; --line: #d0d5dd; --bad: #c62828; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
header { padding: .6rem 1rem; background: #1d2330; color: #fff; }
main { padding: 1rem; }
#graph-box { background: #fff; border: 1px solid var(--line); border-radius: 6px;
  padding: .8rem 1rem; overflow: auto; }
h2 { font-size: 1.05rem; margin: .2rem 0 .6rem; }
.muted { color: var(--muted); }
"""


@dataclass(frozen=True)
class GraphData:
    """The graph of a set of spans: `features.graph` node and edge tables, and their period."""

    nodes: pa.Table  # features.graph.NODE_SCHEMA
    edges: pa.Table  # features.graph.EDGE_SCHEMA
    start_ns: int
    end_ns: int
    colour_by: str  # "errors" or "findings"
    title: str = "service graph"

    @property
    def seconds(self) -> float:
        """The period the spans cover, in seconds (at least a microsecond)."""
        return max((self.end_ns - self.start_ns) / _NS, 1e-6)


def graph_doc(data: GraphData) -> dict[str, Any]:
    """The graph as the dashboard's script draws it: nodes and edges with rates, anomaly."""
    seconds = data.seconds
    nodes = [
        n
        | {
            "rate": round(n["requests"] / seconds, 4),
            "anomaly": findings_anomaly(n["findings"])
            if data.colour_by == "findings"
            else error_anomaly(n["errors"], n["requests"]),
        }
        for n in data.nodes.to_pylist()  # one row per service
    ]
    edges = [e | {"rate": round(e["calls"] / seconds, 4)} for e in data.edges.to_pylist()]
    return {"nodes": nodes, "edges": edges, "colour_by": data.colour_by}


def _summary(data: GraphData) -> str:
    calls = sum(data.edges.column("calls").to_pylist())
    red = sum(data.edges.column(data.colour_by).to_pylist())
    return (
        f"{data.nodes.num_rows} services · {data.edges.num_rows} edges · {calls} calls · "
        f"{red} with {data.colour_by} (red) · {data.seconds:.1f} s of spans · "
        f"width = calls, colour = {data.colour_by}"
    )


def to_html(data: GraphData) -> str:
    """A self-contained page (no network) drawing the graph like the dashboard's overview."""
    # "<" escaped: the data block cannot close its script element, whatever the names hold
    payload = json.dumps(graph_doc(data)).replace("<", "\\u003c")
    scripts = "".join(
        f"<script>{(_STATIC / name).read_text(encoding='utf-8')}</script>\n"
        for name in ("dom.js", "graph.js")
    )
    title = html.escape(data.title)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n<title>{title}</title>\n'
        f"<style>\n{_PAGE_CSS}{(_STATIC / 'graph.css').read_text(encoding='utf-8')}</style>\n"
        f"</head><body>\n<header><strong>spanomaly</strong> · {title}</header>\n<main>"
        f'<section id="graph-box"><h2>Service graph</h2>'
        f'<p class="muted" id="summary">{html.escape(_summary(data))}</p></section></main>\n'
        f'<script type="application/json" id="graph-data">{payload}</script>\n{scripts}'
        "</body></html>\n"
    )


def to_svg(data: GraphData) -> str:
    """The graph as the report draws it (matplotlib), as a standalone SVG document."""
    doc = graph_doc(data)
    figure = plots.service_graph(
        data.edges,
        {n["service"]: n["anomaly"] for n in doc["nodes"]},
        {n["service"]: n["instances"] for n in doc["nodes"]},
        red=[bool(e[data.colour_by]) for e in doc["edges"]],
        title=f"{data.title}: width = calls, red = {data.colour_by}",
    )
    return '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n' + figure


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(data: GraphData) -> str:
    """The graph in Graphviz DOT: penwidth = calls, red edges, nodes filled by anomaly."""
    doc = graph_doc(data)
    top = max((e["calls"] for e in doc["edges"]), default=1) or 1
    lines = [f"digraph {_quote(data.title)} {{", "  rankdir=LR;",
             '  node [shape=circle, style=filled, fontname="sans-serif"];']  # fmt: skip
    for n in doc["nodes"]:
        hue = 0.333 * (1 - min(max(n["anomaly"], 0.0), 1.0))  # the dashboard's green to red
        tip = f"{n['instances']} instances, {n['errors']} errors, {n['findings']} findings"
        lines.append(
            f"  {_quote(n['service'])} [fillcolor={_quote(f'{hue:.3f} 0.7 0.8')}, "
            f"tooltip={_quote(tip)}];"
        )
    for e in doc["edges"]:
        colour = "#c62828" if e[data.colour_by] else "#98a2b3"
        lines.append(
            f"  {_quote(e['caller'])} -> {_quote(e['callee'])} [penwidth="
            f"{1 + 4 * (e['calls'] / top) ** 0.5:.2f}, color={_quote(colour)}, "
            f"label={_quote(str(e['calls']))}, calls={e['calls']}, errors={e['errors']}, "
            f"findings={e['findings']}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_graph(data: GraphData, out: Path) -> Path:
    """Write the graph to out, in the format its suffix names (.html, .svg or .dot)."""
    render = {".html": to_html, ".svg": to_svg, ".dot": to_dot}[out.suffix.lower()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(data), encoding="utf-8")
    return out
