"use strict";
// spanomaly's DOM helpers, shared by the dashboard (served as /static/graph/dom.js) and the
// standalone graph page of `spanomaly graph` (inlined). Data goes into the page through
// textContent or setAttribute only, never innerHTML: names come from the traced applications.
(() => {
  const SVGNS = "http://www.w3.org/2000/svg";
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
  const fmtNum = (x, d = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
  const colour = (a) => `hsl(${Math.round(120 * (1 - Math.min(Math.max(a || 0, 0), 1)))}, 70%, 42%)`;
  window.spanomalyDom = { el, svg, fmtNum, colour };
})();
