"use strict";
// spanomaly dashboard: plain JS + SVG, no framework, no build step, no CDN.
// Every piece of data goes into the page through textContent or setAttribute, never
// innerHTML: span, service and operation names come from the traced applications.
(() => {
  const SVGNS = "http://www.w3.org/2000/svg";
  const POLL_MS = 5000;
  let timer = null;
  let generation = 0; // a view rendered for an older hash ignores its late answers

  // -- DOM helpers -------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    return fill(e, attrs, children);
  }
  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(SVGNS, tag);
    return fill(e, attrs, children);
  }
  function fill(e, attrs, children) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") e.textContent = String(v);
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
      else e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  const main = () => document.getElementById("main");
  function setStatus(text, isError) {
    const s = document.getElementById("status");
    s.textContent = text;
    s.className = isError ? "error" : "";
  }

  // -- API ---------------------------------------------------------------------------------
  async function api(path) {
    const r = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status} ${await r.text()}`);
    return r.json();
  }
  async function post(path, body) {
    const r = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-Spanomaly": "1" },
      body: JSON.stringify(body || {}),
    });
    const doc = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(doc.detail || doc.message || `HTTP ${r.status}`);
    return doc;
  }

  // -- formatting --------------------------------------------------------------------------
  const fmtTime = (ms) => (ms === null || ms === undefined ? "" : new Date(ms).toISOString().replace("T", " ").slice(0, 23));
  const fmtNum = (x, d = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
  const fmtP = (p) => (p === null || p === undefined ? "–" : p >= 0.001 || p === 0 ? Number(p).toFixed(4) : Number(p).toExponential(1));
  const colour = (a) => `hsl(${Math.round(120 * (1 - Math.min(Math.max(a || 0, 0), 1)))}, 70%, 42%)`;
  const toInput = (ms) => (ms ? new Date(ms).toISOString().slice(0, 16) : "");
  const fromInput = (v) => (v ? String(Date.parse(v + ":00Z") / 1000) : "");

  function kv(obj) {
    // an object as nested definition lists (the models' status, a span's fields)
    if (obj === null || typeof obj !== "object") return document.createTextNode(obj === null ? "–" : String(obj));
    if (Array.isArray(obj)) {
      if (obj.every((x) => x === null || typeof x !== "object")) return document.createTextNode(obj.join(", "));
      const ol = el("ol");
      for (const x of obj) ol.append(el("li", null, kv(x)));
      return ol;
    }
    const dl = el("dl", { class: "kv" });
    for (const [k, v] of Object.entries(obj)) dl.append(el("dt", { text: k }), el("dd", null, kv(v)));
    return dl;
  }

  // -- routing -----------------------------------------------------------------------------
  function parseHash() {
    const h = location.hash.replace(/^#\/?/, "");
    const [path, query] = h.split("?");
    const parts = path.split("/").map(decodeURIComponent);
    return { view: parts[0] || "overview", arg: parts.slice(1).join("/"), params: new URLSearchParams(query || "") };
  }
  async function route() {
    clearInterval(timer);
    timer = null;
    const gen = ++generation;
    const { view, arg, params } = parseHash();
    for (const a of document.querySelectorAll("nav a[data-view]")) {
      a.classList.toggle("active", a.dataset.view === view || (view === "trace" && a.dataset.view === "anomalies") || (view === "instance" && a.dataset.view === "instances"));
    }
    const views = { overview, anomalies, trace: traceView, instances: instanceList, instance: instanceView, models };
    const fn = views[view] || overview;
    try {
      await fn(arg, params, gen);
    } catch (err) {
      if (gen === generation) main().replaceChildren(el("p", { class: "error", text: err.message }));
    }
  }
  window.addEventListener("hashchange", route);
  window.addEventListener("DOMContentLoaded", route);

  // -- overview: graph, alarms, suspects -----------------------------------------------------
  async function overview(_arg, _params, gen) {
    const graphBox = el("section", { id: "graph-box", class: "panel wide" }, el("h2", { text: "Service graph" }));
    const side = el("section", { class: "panel side" });
    main().replaceChildren(el("div", { class: "columns" }, graphBox, side));
    const refresh = async () => {
      const doc = await api("/api/overview");
      if (gen !== generation) return;
      graphBox.replaceChildren(
        el("h2", { text: "Service graph" }),
        el("p", { class: "muted", text: `${fmtTime(doc.window.from_ms)} – ${fmtTime(doc.window.to_ms)} · ${doc.graph.nodes.length} services · ${doc.findings} findings` }),
        drawGraph(doc.graph),
      );
      side.replaceChildren(el("h2", { text: "Alarms" }), alarmList(doc.alarms), el("h2", { text: "Top suspects" }), suspectList(doc.suspects));
      setStatus(`updated ${new Date().toLocaleTimeString()}`);
    };
    await refresh();
    timer = setInterval(() => refresh().catch((e) => setStatus(e.message, true)), POLL_MS);
  }

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

  function drawGraph(g) {
    const { pos, width, height } = layout(g.nodes, g.edges);
    const root = svg("svg", { id: "graph", viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "service dependency graph" });
    root.append(
      svg("defs", null, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))),
    );
    const maxRate = Math.max(1e-9, ...g.edges.map((e) => e.rate));
    for (const e of g.edges) {
      const a = pos.get(e.caller), b = pos.get(e.callee);
      if (!a || !b) continue;
      const ang = Math.atan2(b.y - a.y, b.x - a.x);
      const line = svg("line", {
        class: e.errors ? "edge errors" : "edge",
        x1: a.x + 14 * Math.cos(ang), y1: a.y + 14 * Math.sin(ang), x2: b.x - 16 * Math.cos(ang), y2: b.y - 16 * Math.sin(ang),
        "stroke-width": 1 + 4 * Math.sqrt(e.rate / maxRate), "marker-end": "url(#arrow)",
        "data-caller": e.caller, "data-callee": e.callee,
      });
      line.append(svg("title", { text: `${e.caller} → ${e.callee}: ${fmtNum(e.rate)} calls/s, ${e.errors} errors, mean ${fmtNum(e.mean_ms)} ms` }));
      root.append(line);
    }
    for (const n of g.nodes) {
      const p = pos.get(n.service);
      const r = 10 + Math.min(8, 2 * Math.log2(1 + n.instances));
      const node = svg("g", { class: "node", "data-service": n.service, "data-anomaly": n.anomaly, transform: `translate(${p.x},${p.y})`, tabindex: 0 });
      node.append(
        svg("circle", { r, fill: colour(n.anomaly) }),
        svg("text", { class: "label", y: r + 12, "text-anchor": "middle", text: n.service }),
        svg("text", { class: "count", y: 4, "text-anchor": "middle", text: n.instances }),
        svg("title", { text: `${n.service}: ${n.instances} instances, ${fmtNum(n.rate)} req/s, ${n.errors} errors, mean ${fmtNum(n.mean_ms)} ms, ${n.findings} findings` }),
      );
      const open = () => { location.hash = `#/anomalies?service=${encodeURIComponent(n.service)}`; };
      node.addEventListener("click", open);
      node.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
      root.append(node);
    }
    return root;
  }

  function alarmList(alarms) {
    if (!alarms.length) return el("p", { class: "muted", text: "No alarms in this window." });
    const ul = el("ul", { id: "alarms", class: "list" });
    for (const a of alarms.slice(0, 20)) {
      const link = el("a", { href: `#/anomalies?service=${encodeURIComponent(a.service)}&from=${a.from_ms / 1000}&to=${a.to_ms / 1000 + 0.001}`, text: a.service });
      ul.append(el("li", { class: a.active ? "alarm active" : "alarm" }, link, ` ${a.findings} findings, ${fmtTime(a.from_ms)} – ${fmtTime(a.to_ms)}`, a.active ? el("span", { class: "badge", text: "active" }) : null));
    }
    return ul;
  }

  function suspectList(suspects) {
    if (!suspects.length) return el("p", { class: "muted", text: "No suspects." });
    const ol = el("ol", { id: "suspects", class: "list" });
    for (const s of suspects) {
      const inst = s.instance ? el("a", { href: `#/instance/${encodeURIComponent(s.instance)}`, text: s.instance }) : "";
      const ev = s.evidence || {};
      const reasons = el("ul", { class: "reasons" });
      for (const r of ev.reasons || []) reasons.append(el("li", { text: r }));
      const why = [`score ${fmtNum(s.score)}`, `${ev.trace_findings || 0} trace findings`, `${ev.anomalous_windows || 0} anomalous windows`, ev.graph || ""].filter(Boolean).join(" · ");
      ol.append(el("li", null, el("strong", { text: s.service }), " ", inst, s.operation ? ` · ${s.operation}` : "", el("div", { class: "muted", text: why }), reasons));
    }
    return ol;
  }

  // -- anomalies: filtered findings list ------------------------------------------------------
  async function anomalies(_arg, params, gen) {
    const opts = await api("/api/findings/filters");
    if (gen !== generation) return;
    const sel = (id, values, current) => {
      const s = el("select", { id, name: id }, el("option", { value: "", text: "all" }));
      for (const v of values) s.append(el("option", { value: v, text: v, selected: v === current ? "selected" : null }));
      return s;
    };
    const sec = (name) => params.get(name) ? Number(params.get(name)) * 1000 : null;
    const form = el("form", { id: "filters", class: "filters" },
      el("label", null, "Service ", sel("service", opts.services, params.get("service") || "")),
      el("label", null, "Kind ", sel("kind", opts.kinds, params.get("kind") || "")),
      el("label", null, "From (UTC) ", el("input", { type: "datetime-local", id: "from", value: toInput(sec("from")) })),
      el("label", null, "To (UTC) ", el("input", { type: "datetime-local", id: "to", value: toInput(sec("to")) })),
      el("label", null, el("input", { type: "checkbox", id: "hide-normal", checked: params.get("hide_normal") ? "checked" : null }), " hide false positives"),
      el("button", { type: "submit", text: "Apply" }));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      for (const id of ["service", "kind"]) if (form.querySelector(`#${id}`).value) q.set(id, form.querySelector(`#${id}`).value);
      for (const id of ["from", "to"]) { const v = fromInput(form.querySelector(`#${id}`).value); if (v) q.set(id, v); }
      if (form.querySelector("#hide-normal").checked) q.set("hide_normal", "1");
      location.hash = `#/anomalies?${q}`;
    });
    const offset = Number(params.get("offset") || 0);
    const q = new URLSearchParams({ limit: "100", offset: String(offset) });
    for (const k of ["service", "kind", "from", "to"]) if (params.get(k)) q.set(k, params.get(k));
    if (params.get("hide_normal")) q.set("include_normal", "false");
    const page = await api(`/api/findings?${q}`);
    if (gen !== generation) return;
    const table = el("table", { id: "findings", class: "grid" },
      el("thead", null, el("tr", null, ...["time (UTC)", "kind", "service", "instance", "score", "reason", ""].map((h) => el("th", { text: h })))));
    const body = el("tbody");
    for (const f of page.items) {
      const target = f.trace_id ? `#/trace/${encodeURIComponent(f.trace_id)}?finding=${encodeURIComponent(f.finding_id)}` : `#/instance/${encodeURIComponent(f.instance || "")}?finding=${encodeURIComponent(f.finding_id)}`;
      const tr = el("tr", { class: f.feedback ? "finding normal" : "finding", "data-finding": f.finding_id, tabindex: 0 },
        el("td", { text: fmtTime(f.time_ms) }), el("td", { text: f.entity }), el("td", { text: f.service }),
        el("td", { text: f.instance }), el("td", { class: "num", text: fmtNum(f.score, 3) }), el("td", { text: f.reason }),
        el("td", { text: f.feedback ? "false positive" : "" }));
      tr.addEventListener("click", () => { location.hash = target; });
      tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") location.hash = target; });
      body.append(tr);
    }
    table.append(body);
    const nav = el("p", { class: "pager" }, `${page.total} findings`);
    const go = (o) => { const p = new URLSearchParams(params); p.set("offset", String(o)); location.hash = `#/anomalies?${p}`; };
    if (offset > 0) nav.append(" ", el("button", { type: "button", text: "newer", on: { click: () => go(Math.max(0, offset - 100)) } }));
    if (offset + page.items.length < page.total) nav.append(" ", el("button", { type: "button", text: "older", on: { click: () => go(offset + 100) } }));
    main().replaceChildren(el("section", { class: "panel" }, el("h2", { text: "Anomalies" }), form, nav, table));
  }

  // -- trace waterfall -------------------------------------------------------------------------
  async function traceView(traceId, params, gen) {
    const doc = await api(`/api/traces/${encodeURIComponent(traceId)}`);
    if (gen !== generation) return;
    const fid = params.get("finding");
    const finding = doc.findings.find((f) => f.finding_id === fid) || doc.findings[0] || null;
    const deviating = finding ? finding.span_id : null;
    const slow = finding && finding.details && finding.details.duration ? finding.details.duration.span_id : null;
    // depth-first order from the roots, children by start time (a trace: thousands of spans at most)
    const byId = new Map(doc.spans.map((s) => [s.span_id, s]));
    const kids = new Map();
    const roots = [];
    for (const s of doc.spans) {
      if (s.parent_id && byId.has(s.parent_id)) { if (!kids.has(s.parent_id)) kids.set(s.parent_id, []); kids.get(s.parent_id).push(s); }
      else roots.push(s);
    }
    const ordered = [];
    const stack = roots.slice().reverse().map((s) => [s, 0]);
    while (stack.length) {
      const [s, d] = stack.pop();
      ordered.push([s, d]);
      for (const c of (kids.get(s.span_id) || []).slice().reverse()) stack.push([c, d + 1]);
    }
    const total = Math.max(1e-6, ...doc.spans.map((s) => s.offset_ms + s.duration_ms));
    const detail = el("div", { id: "span-detail", class: "panel" }, el("p", { class: "muted", text: "Click a span for its fields." }));
    const rows = el("div", { id: "waterfall", class: "waterfall" });
    const linesOf = new Map(); // span id -> its log lines, in time order
    for (const line of doc.logs || []) { if (!linesOf.has(line.span_id)) linesOf.set(line.span_id, []); linesOf.get(line.span_id).push(line); }
    rows.append(el("div", { class: "wf-head" }, el("span", { class: "wf-label", text: "service · operation" }), el("span", { class: "wf-scale", text: `0 – ${fmtNum(total, 1)} ms` })));
    for (const [s, d] of ordered) {
      const cls = ["span-row", s.status === "error" ? "error" : "", s.span_id === deviating ? "deviating" : "", s.span_id === slow && slow !== deviating ? "slow" : ""].filter(Boolean).join(" ");
      const bar = el("span", { class: "bar", style: null });
      bar.style.left = `${(100 * s.offset_ms) / total}%`;
      bar.style.width = `${Math.max(0.2, (100 * s.duration_ms) / total)}%`;
      const label = el("span", { class: "wf-label" }, el("span", { class: "svc", text: s.service }), " · ", el("span", { class: "op", text: s.operation }));
      label.style.paddingLeft = `${Math.min(d, 30) * 12}px`;
      const row = el("div", { class: cls, "data-span": s.span_id, tabindex: 0 }, label, el("span", { class: "wf-track" }, bar, el("span", { class: "dur", text: `${fmtNum(s.duration_ms, 2)} ms` })));
      row.addEventListener("click", () => detail.replaceChildren(el("h3", { text: "Span" }), kv(s)));
      rows.append(row);
      for (const line of linesOf.get(s.span_id) || []) rows.append(logRow(line, d + 1));
      linesOf.delete(s.span_id);
    }
    for (const rest of linesOf.values()) for (const line of rest) rows.append(logRow(line, 0));
    const parts = [el("h2", null, "Trace ", el("code", { text: doc.trace_id })), el("p", { class: "muted", text: `${fmtTime(doc.start_ms)} · ${doc.spans.length} spans${doc.truncated ? " (truncated)" : ""}` })];
    main().replaceChildren(el("div", { class: "columns" },
      el("section", { class: "panel wide" }, ...parts, rows),
      el("div", { class: "side" }, explanation(finding), detail)));
  }

  function logRow(line, depth) {
    // a log line under its span: offset, severity, text, template; the line a finding names is marked
    const sev = (line.severity || "").toLowerCase();
    const cls = ["log-row", sev === "error" || sev === "fatal" ? "error" : "", sev === "warn" ? "warn" : "", line.finding ? "marked" : ""].filter(Boolean).join(" ");
    const label = el("span", { class: "wf-label log-label" }, el("span", { class: "sev", text: line.severity || "" }), " ", el("span", { class: "log-text", text: line.body || "" }));
    label.style.paddingLeft = `${Math.min(depth, 30) * 12}px`;
    const meta = `+${fmtNum(line.offset_ms, 2)} ms` + (line.template_id === null || line.template_id === undefined ? "" : ` · template ${line.template_id}`);
    return el("div", { class: cls, "data-span": line.span_id || "", title: line.body || "" }, label, el("span", { class: "wf-track log-meta", text: meta }));
  }

  function explanation(f) {
    const box = el("section", { id: "explanation", class: "panel" }, el("h2", { text: "Explanation" }));
    if (!f) { box.append(el("p", { class: "muted", text: "No finding on this trace." })); return box; }
    box.append(el("p", { class: "reason", text: f.reason }),
      el("p", { class: "muted", text: `${f.detector} · score ${fmtNum(f.score, 3)} (threshold ${fmtNum(f.threshold, 3)}) · ${f.service || ""} ${f.instance || ""}` }));
    const d = f.details || {};
    if (d.event) box.append(el("h3", { text: "Deviating event" }), el("p", null, el("code", { text: d.event.key || `${d.event.service} ${d.event.operation}` }), ` at position ${d.event.index}`));
    if (d.sequence) {
      const s = d.sequence;
      box.append(el("h3", { text: "Sequence: expected versus observed" }),
        el("p", null, "after ", el("code", { text: s.previous }), " observed ", el("code", { class: "observed", text: s.observed }), ` (p ${fmtP(s.p)}, rank ${s.rank})`));
      const t = el("table", { class: "grid expected" }, el("tr", null, el("th", { text: "expected next" }), el("th", { text: "p" })));
      for (const e of s.expected || []) t.append(el("tr", null, el("td", null, el("code", { text: e.key })), el("td", { class: "num", text: fmtP(e.p) })));
      box.append(t);
    }
    if (d.duration) {
      const u = d.duration;
      const t = el("table", { class: "grid duration" }, el("tr", null, el("th"), el("th", { text: "observed" }), el("th", { text: "normal" }), el("th", { text: "upper" })));
      t.append(el("tr", null, el("th", { text: "duration ms" }), el("td", { class: "num observed", text: fmtNum(u.duration_ms) }), el("td", { class: "num", text: fmtNum(u.normal_duration_ms) }), el("td", { class: "num", text: fmtNum(u.upper_duration_ms) })));
      t.append(el("tr", null, el("th", { text: "self ms" }), el("td", { class: "num observed", text: fmtNum(u.self_ms) }), el("td", { class: "num", text: fmtNum(u.normal_self_ms) }), el("td", { class: "num", text: fmtNum(u.upper_self_ms) })));
      box.append(el("h3", { text: "Duration: expected versus observed" }), t);
    }
    box.append(feedbackButton(f));
    return box;
  }

  function feedbackButton(f) {
    const out = el("div", { id: "feedback-result", class: "muted" });
    const button = el("button", { type: "button", id: "mark-fp", text: f.feedback ? "Marked as false positive" : "Mark as false positive", disabled: f.feedback ? "disabled" : null });
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const doc = await post(`/api/findings/${encodeURIComponent(f.finding_id)}/feedback`);
        button.textContent = "Marked as false positive";
        out.replaceChildren(kv(doc));
      } catch (err) {
        button.disabled = false;
        out.replaceChildren(el("span", { class: "error", text: err.message }));
      }
    });
    return el("div", { class: "actions" }, button, out);
  }

  // -- instances --------------------------------------------------------------------------------
  async function instanceList(_arg, _params, gen) {
    const rows = await api("/api/instances");
    if (gen !== generation) return;
    const t = el("table", { id: "instances", class: "grid" }, el("tr", null, ...["service", "instance", "spans", "metric points", "findings"].map((h) => el("th", { text: h }))));
    for (const r of rows) {
      t.append(el("tr", { class: r.findings ? "flagged" : "" }, el("td", { text: r.service }),
        el("td", null, el("a", { href: `#/instance/${encodeURIComponent(r.instance)}`, text: r.instance })),
        el("td", { class: "num", text: r.spans }), el("td", { class: "num", text: r.points }), el("td", { class: "num", text: r.findings })));
    }
    main().replaceChildren(el("section", { class: "panel" }, el("h2", { text: "Instances" }), t));
  }

  async function instanceView(instance, params, gen) {
    const fid = params.get("finding");
    const [doc, finding] = await Promise.all([
      api(`/api/instances/${encodeURIComponent(instance)}/series`),
      fid ? api(`/api/findings/${encodeURIComponent(fid)}`) : Promise.resolve(null),
    ]);
    if (gen !== generation) return;
    const box = el("section", { class: "panel" }, el("h2", null, "Instance ", el("code", { text: doc.instance })),
      el("p", { class: "muted", text: `${doc.service || ""} · ${fmtTime(doc.window.from_ms)} – ${fmtTime(doc.window.to_ms)} · bucket ${fmtNum(doc.bucket_s, 1)} s · ${doc.anomalies.length} anomalies · ${doc.faults.length} fault windows` }),
      el("p", { class: "legend" }, el("span", { class: "key anomaly" }), " anomaly window ", el("span", { class: "key fault" }), " fault window (label)"));
    const names = Object.keys(doc.series);
    if (!names.length) box.append(el("p", { class: "muted", text: "No data in this window." }));
    for (const name of names) box.append(chart(name, doc.series[name], doc, fid));
    if (!finding) { main().replaceChildren(box); return; }
    const why = el("section", { id: "explanation", class: "panel" }, el("h2", { text: "Finding" }),
      el("p", { class: "reason", text: finding.reason }),
      el("p", { class: "muted", text: `${fmtTime(finding.time_ms)} · ${finding.detector} · score ${fmtNum(finding.score, 3)} (threshold ${fmtNum(finding.threshold, 3)})` }),
      kv(finding.details), feedbackButton(finding));
    main().replaceChildren(el("div", { class: "columns" }, el("div", { class: "wide" }, box), el("div", { class: "side" }, why)));
  }

  function chart(name, s, doc, selected) {
    const W = 720, H = 110, P = 4;
    const lo = doc.window.from_ms, hi = doc.window.to_ms;
    const x = (t) => P + ((W - 2 * P) * (t - lo)) / Math.max(1, hi - lo);
    const vmax = Math.max(1e-12, ...s.v), vmin = Math.min(0, ...s.v);
    const y = (v) => H - P - ((H - 2 * P) * (v - vmin)) / Math.max(1e-12, vmax - vmin);
    const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H, "data-series": name });
    const band = doc.bucket_s * 1000;
    for (const f of doc.faults) root.append(svg("rect", { class: "fault", x: x(f.from_ms), y: 0, width: Math.max(2, x(f.to_ms) - x(f.from_ms)), height: H }, svg("title", { text: `fault ${f.kind} ${f.fault_id}` })));
    for (const a of doc.anomalies) root.append(svg("rect", { class: a.finding_id === selected ? "anomaly selected" : "anomaly", x: x(a.time_ms), y: 0, width: Math.max(2, x(a.time_ms + band) - x(a.time_ms)), height: H }, svg("title", { text: a.reason || "" })));
    // one line per run of buckets with data; a gap in the data is a gap in the line
    let run = [];
    const flush = () => {
      if (run.length === 1) root.append(svg("circle", { class: "point", cx: x(run[0][0]).toFixed(1), cy: y(run[0][1]).toFixed(1), r: 2 }));
      else if (run.length) root.append(svg("polyline", { class: "series", points: run.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ") }));
      run = [];
    };
    s.t_ms.forEach((t, i) => {
      if (run.length && t - run[run.length - 1][0] > 1.5 * band) flush();
      run.push([t, s.v[i]]);
    });
    flush();
    return el("figure", { class: "chart-box" }, el("figcaption", { text: `${name} (max ${fmtNum(vmax, 3)})` }), root);
  }

  // -- models ----------------------------------------------------------------------------------
  async function models(_arg, _params, gen) {
    // the online detector's model: GET /api/model, 404 when the server runs without one
    const r = await fetch("/api/model", { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!r.ok && r.status !== 404) throw new Error(`/api/model: HTTP ${r.status}`);
    const doc = r.ok ? await r.json() : null;
    if (gen !== generation) return;
    const box = el("section", { id: "models", class: "panel" }, el("h2", { text: "Models" }));
    if (!doc) {
      box.append(el("p", { class: "muted", text: "No model loaded: start the server with --model DIR for online detection, retraining and learning from feedback." }));
      main().replaceChildren(box);
      return;
    }
    box.append(el("div", { id: "model-status" }, kv(doc)));
    const from = el("input", { type: "datetime-local", id: "retrain-from" });
    const to = el("input", { type: "datetime-local", id: "retrain-to" });
    const out = el("div", { id: "retrain-result", class: "muted" });
    const form = el("form", { class: "filters", id: "retrain" }, el("label", null, "Normal period from (UTC) ", from), el("label", null, "to ", to), el("button", { type: "submit", text: "Retrain" }));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      out.textContent = "retraining…";
      try {
        const ns = (v) => (v ? Date.parse(v + ":00Z") * 1e6 : null); // whole minutes: exact as JSON integers
        const res = await post("/api/model/retrain", { from: ns(from.value), to: ns(to.value) });
        out.replaceChildren(kv(res));
      } catch (err) {
        out.replaceChildren(el("span", { class: "error", text: err.message }));
      }
    });
    box.append(el("h3", { text: "Retrain on a normal period" }), form, out);
    main().replaceChildren(box);
  }
})();
