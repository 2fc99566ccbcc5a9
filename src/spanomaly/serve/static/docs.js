"use strict";
// The API reference: every route of /openapi.json with its parameters, rendered with
// textContent only (works offline: no CDN, no framework).
(async () => {
  const main = document.getElementById("main");
  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  };
  let doc;
  try {
    const r = await fetch("/openapi.json", { headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    doc = await r.json();
  } catch (err) {
    main.replaceChildren(el("p", `Cannot load /openapi.json: ${err.message}`, "error"));
    return;
  }
  main.replaceChildren(el("h1", `${doc.info.title} ${doc.info.version}`));
  for (const [path, ops] of Object.entries(doc.paths).sort()) {
    for (const [method, op] of Object.entries(ops)) {
      const sec = el("section", null, "endpoint");
      const h = el("h2");
      h.append(el("span", method.toUpperCase(), `method ${method}`), " ", el("code", path));
      sec.append(h, el("p", op.summary || ""));
      if (op.description) sec.append(el("pre", op.description, "doc"));
      const params = op.parameters || [];
      if (params.length) {
        const t = el("table");
        const head = el("tr");
        for (const c of ["parameter", "in", "type", "required", "description"]) head.append(el("th", c));
        t.append(head);
        for (const p of params) {
          const tr = el("tr");
          const s = p.schema || {};
          const type = s.type || (s.anyOf || []).map((x) => x.type).filter(Boolean).join(" | ");
          for (const v of [p.name, p.in, type, p.required ? "yes" : "", p.description || ""]) tr.append(el("td", v));
          t.append(tr);
        }
        sec.append(t);
      }
      if (op.requestBody) sec.append(el("p", "Body: JSON (see openapi.json).", "muted"));
      main.append(sec);
    }
  }
})();
