"""The page, SVG and DOT of `spanomaly graph`: the dashboard's graph drawn offline from a file,
rendered by headless Chromium (a screenshot test), names shown as text and never run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spanomaly.pipeline.graph import file_graph
from spanomaly.report.graph_file import to_dot, to_html, write_graph
from tests.features import graph_files
from tests.report.artifacts import keep

CHROMIUM = "/usr/bin/chromium"
EVIL = '</script><img src=x onerror=alert(1)>"'


@pytest.mark.parametrize("fmt", sorted(graph_files.WRITERS))
def test_page_renders_in_headless_chromium(fmt: str, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian chromium)")
    pw = pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is absent")
    data = file_graph([graph_files.WRITERS[fmt](tmp_path / "in.json")], title=f"{fmt} {EVIL}")
    page_file = write_graph(data, tmp_path / "graph.html")
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        page = browser.new_page(viewport={"width": 1000, "height": 600})
        dialogs: list[str] = []
        errors: list[str] = []
        requests: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_file.as_uri())
        nodes = page.locator("svg#graph g.node")
        assert nodes.count() == 4
        assert {nodes.nth(i).get_attribute("data-service") for i in range(4)} == {
            "gateway", "orders", "users", "db"}  # fmt: skip
        assert page.locator("svg#graph line.edge").count() == 3
        red = page.locator("svg#graph line.edge.errors")
        assert red.count() == 1
        assert (red.get_attribute("data-caller"), red.get_attribute("data-callee")) == (
            "gateway", "orders")  # fmt: skip
        # edge width grows with the calls: orders -> db (2 calls) wider than gateway -> users (1)
        width = {(e.get_attribute("data-caller"), e.get_attribute("data-callee")):
                 float(e.get_attribute("stroke-width") or 0)
                 for e in page.locator("svg#graph line.edge").all()}  # fmt: skip
        assert width[("orders", "db")] > width[("gateway", "users")]
        # orders (1 error in 2) redder than users (none): hue falls from 120 (green)
        hue = {s: float(page.locator(f'g.node[data-service="{s}"] circle').get_attribute("fill")
                        .split("(")[1].split(",")[0]) for s in ("orders", "users")}  # fmt: skip
        assert hue["orders"] < 10 and hue["users"] == 120
        box = page.locator("svg#graph").bounding_box()
        assert box and box["width"] > 400 and box["height"] > 100
        assert page.get_by_text(EVIL).count() >= 1 and not dialogs and not errors
        assert all(u.startswith("file:") for u in requests), requests
        shot = tmp_path / f"graph-{fmt}.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    keep(shot)  # where CI collects test artifacts


def test_names_cannot_break_out_of_the_page_or_the_dot(tmp_path: Path) -> None:
    data = file_graph([graph_files.otlp(tmp_path / "in.json")], title=EVIL)
    page = to_html(data)
    assert EVIL not in page and "&lt;/script&gt;" in page  # the title, escaped
    block = page.split('id="graph-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(block)["colour_by"] == "errors"
    dot = to_dot(data)
    assert dot.splitlines()[0] == 'digraph "</script><img src=x onerror=alert(1)>\\"" {'
