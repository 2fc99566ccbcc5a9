"use strict";
// The service graph as SVG, shared by the dashboard's overview (served as
// /static/graph/graph.js) and the standalone page of `spanomaly graph` (inlined, its data in
// <script type="application/json" id="graph-data">). Needs dom.js first.
(() => {
  const { svg, fmtNum, colour } = window.spanomalyDom;

  function layout(nodes, edges) {
    // layers by longest call path from the entry services (cycles cut), then spread
    const names = nodes.map((n) => n.service);
    const out = new Map(names.map((n) => [n, []]));
    const indeg = new Map(names.map((n) => [n, 0]));
    for (const e of edges) {
      if (!out.has(e.caller) || !out.has(e.callee)) continue;
      out.get(e.caller).push(e.callee);
      indeg.set(e.callee, indeg.get(e.callee) + 1);
    }
    const level = new Map(names.map((n) => [n, 0]));
    const queue = names.filter((n) => indeg.get(n) === 0);
    const left = new Map(indeg);
    const seen = new Set();
    while (queue.length) {
      const n = queue.shift();
      seen.add(n);
      for (const m of out.get(n)) {
        level.set(m, Math.max(level.get(m), level.get(n) + 1));
        left.set(m, left.get(m) - 1);
        if (left.get(m) === 0) queue.push(m);
      }
    }
    const layers = [];
    for (const n of names) {
      const l = seen.has(n) ? level.get(n) : 0;
      (layers[l] = layers[l] || []).push(n);
    }
    const pos = new Map();
    const dx = 190, dy = 56;
    const tallest = Math.max(1, ...layers.map((l) => (l ? l.length : 0)));
    layers.forEach((layer, i) => {
      (layer || []).forEach((n, j) => pos.set(n, { x: 90 + i * dx, y: 40 + (j + (tallest - layer.length) / 2) * dy }));
    });
    return { pos, width: 180 + Math.max(1, layers.length) * dx, height: 40 + tallest * dy };
  }

  // g: {nodes, edges, colour_by?}; an edge is red when it has errors (or, with colour_by
  // "findings", findings); open(service), where given, follows a click on a node
  function draw(g, open) {
    const { pos, width, height } = layout(g.nodes, g.edges);
    const by = g.colour_by || "errors";
    const root = svg("svg", { id: "graph", viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "service dependency graph", "data-colour-by": by });
    root.append(
      svg("defs", null, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))),
    );
    const maxRate = Math.max(1e-9, ...g.edges.map((e) => e.rate));
    for (const e of g.edges) {
      const a = pos.get(e.caller), b = pos.get(e.callee);
      if (!a || !b) continue;
      const ang = Math.atan2(b.y - a.y, b.x - a.x);
      const line = svg("line", {
        class: e[by] ? "edge errors" : "edge",
        x1: a.x + 14 * Math.cos(ang), y1: a.y + 14 * Math.sin(ang), x2: b.x - 16 * Math.cos(ang), y2: b.y - 16 * Math.sin(ang),
        "stroke-width": 1 + 4 * Math.sqrt(e.rate / maxRate), "marker-end": "url(#arrow)",
        "data-caller": e.caller, "data-callee": e.callee, "data-calls": e.calls,
      });
      const found = e.findings === undefined ? "" : `, ${e.findings} with findings`;
      line.append(svg("title", { text: `${e.caller} → ${e.callee}: ${e.calls} calls (${fmtNum(e.rate)}/s), ${e.errors} errors${found}, mean ${fmtNum(e.mean_ms)} ms` }));
      root.append(line);
    }
    for (const n of g.nodes) {
      const p = pos.get(n.service);
      const r = 10 + Math.min(8, 2 * Math.log2(1 + n.instances));
      const node = svg("g", { class: "node", "data-service": n.service, "data-anomaly": n.anomaly, transform: `translate(${p.x},${p.y})`, tabindex: open ? 0 : null });
      node.append(
        svg("circle", { r, fill: colour(n.anomaly) }),
        svg("text", { class: "label", y: r + 12, "text-anchor": "middle", text: n.service }),
        svg("text", { class: "count", y: 4, "text-anchor": "middle", text: n.instances }),
        svg("title", { text: `${n.service}: ${n.instances} instances, ${fmtNum(n.rate)} req/s, ${n.errors} errors, mean ${fmtNum(n.mean_ms)} ms, ${n.findings} findings` }),
      );
      if (open) {
        node.addEventListener("click", () => open(n.service));
        node.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(n.service); });
      }
      root.append(node);
    }
    return root;
  }

  window.spanomalyGraph = { draw };
  const data = document.getElementById("graph-data");
  const box = document.getElementById("graph-box");
  if (data && box) box.append(draw(JSON.parse(data.textContent)));
})();
