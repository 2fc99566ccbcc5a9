"""The dashboard in a real browser: Playwright driving Debian's Chromium against a server
over the small store of `dashboard_data` (planted anomalies, a trained n-gram model).

Screenshots go to each test's tmp_path; with SPANOMALY_TEST_ARTIFACTS=DIR set they are
copied there too (e.g. ``SPANOMALY_TEST_ARTIFACTS=test-artifacts``, ignored by git).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve.dashboard_data import (
    INSTANCE,
    SPIKE,
    XSS,
    Data,
    add_trace_logs,
    app_over,
    build,
    running,
)
from tests.serve.test_app import body as spans_body

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is absent")
expect = sync_api.expect  # waits through the protocol: the page's CSP forbids eval

SERVICES = {"gateway", "user-service", "order-service", "auth-service", XSS}
TOKEN = "browser-token"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Data:
    """The store and model, built once for the module."""
    return build(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, headless, without the sandbox (containers)."""
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--headless"])
        yield b
        b.close()


class Session:
    """A server over a private copy of the store, and a browser page on it."""

    def __init__(self, url: str, page: Any, data: Data, shots: Path) -> None:
        self.url, self.page, self.data, self.shots = url, page, data, shots
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, hash_path: str) -> None:
        """Go to a view of the dashboard."""
        self.page.goto(f"{self.url}/{hash_path}")

    def shot(self, name: str) -> Path:
        """Save a full-page screenshot (and copy it to $SPANOMALY_TEST_ARTIFACTS)."""
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        target = os.environ.get("SPANOMALY_TEST_ARTIFACTS")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(target) / path.name)
        assert path.stat().st_size > 1000
        return path

    def findings(self, **params: object) -> list[dict[str, Any]]:
        """The findings, from the API."""
        return httpx.get(f"{self.url}/api/findings", params=params, timeout=30).json()["items"]


@pytest.fixture
def session(built: Data, browser: Any, tmp_path: Path) -> Iterator[Session]:
    """A fresh server and page; no dialogs and no console errors (CSP ones included)."""
    data = built.copy_to(tmp_path / "data")
    app, _ = app_over(data)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        with running(app) as url:
            s = Session(url, context.new_page(), data, tmp_path)
            yield s
            assert s.dialogs == [], "a dialog opened: a script ran"
            assert s.errors == [], s.errors
    finally:
        context.close()


def test_graph_renders_every_service_coloured_by_anomaly(session: Session) -> None:
    page = session.page
    session.open("#/overview")
    nodes = page.locator("svg#graph g.node")
    nodes.nth(len(SERVICES) - 1).wait_for()
    assert nodes.count() == len(SERVICES)
    services = {nodes.nth(i).get_attribute("data-service") for i in range(nodes.count())}
    assert services == SERVICES
    order = page.locator('svg#graph g.node[data-service="order-service"]')
    assert float(order.get_attribute("data-anomaly")) > 0
    gateway = page.locator('svg#graph g.node[data-service="gateway"]')
    assert float(gateway.get_attribute("data-anomaly")) == 0
    assert order.locator("circle").get_attribute("fill") != gateway.locator("circle").get_attribute(
        "fill"
    )
    assert page.locator("svg#graph line.edge").count() >= 3
    assert page.locator("#alarms li").count() == 3
    assert page.locator("#suspects li").count() >= 1
    session.shot("overview")
    # a click on a service opens its findings
    order.click()
    page.wait_for_url("**/#/anomalies?service=order-service")
    expect(page.locator("table#findings tbody tr")).to_have_count(3)


def test_a_finding_opens_its_trace_with_the_deviating_span(session: Session) -> None:
    page = session.page
    unknown = next(
        f for f in session.findings() if f["span_id"] == session.data.planted["unknown_op"]
    )
    session.open("#/anomalies")
    row = page.locator(f'tr[data-finding="{unknown["finding_id"]}"]')
    row.click()
    page.wait_for_url(f"**/#/trace/{unknown['trace_id']}?finding={unknown['finding_id']}")
    deviating = page.locator(".span-row.deviating")
    deviating.wait_for()
    assert deviating.count() == 1
    assert deviating.get_attribute("data-span") == session.data.planted["unknown_op"]
    assert deviating.locator(".op").text_content() == "SELECT secrets"
    assert page.locator(".span-row").count() > 5
    explanation = page.locator("#explanation")
    assert "unknown event" in explanation.locator(".reason").text_content()
    assert "SELECT secrets" in explanation.locator("code.observed").text_content()
    assert explanation.locator("table.expected tr").count() >= 2  # header + expected keys
    session.shot("trace-unknown-op")
    # the slow span: expected versus observed duration
    slow = next(f for f in session.findings() if f["span_id"] == session.data.planted["slow_span"])
    session.open(f"#/trace/{slow['trace_id']}?finding={slow['finding_id']}")
    page.locator("#explanation table.duration").wait_for()
    observed = page.locator("#explanation table.duration td.observed").first.text_content()
    assert float(observed) > 1000
    assert page.locator(".span-row.deviating").get_attribute("data-span") == slow["span_id"]
    session.shot("trace-slow-span")


def test_marking_a_false_positive_updates_the_model(session: Session) -> None:
    page = session.page
    session.open("#/models")
    page.locator("#model-status").wait_for()
    assert "ngram" in page.locator("#model-status").text_content()
    session.shot("models")
    before = httpx.get(f"{session.url}/api/model", timeout=30).json()
    keys = json.loads((session.data.model / "vocabulary.json").read_text())["keys"]
    unknown = next(
        f for f in session.findings() if f["span_id"] == session.data.planted["unknown_op"]
    )
    session.open(f"#/trace/{unknown['trace_id']}?finding={unknown['finding_id']}")
    page.locator("#mark-fp").click()
    expect(page.locator("#mark-fp")).to_have_text("Marked as false positive")
    assert "model_updated" in page.locator("#feedback-result").text_content()
    after = httpx.get(f"{session.url}/api/model", timeout=30).json()
    feedback_traces = before["trained_on"]["feedback_traces"] + 1
    assert after["trained_on"]["feedback_traces"] == feedback_traces
    learnt = json.loads((session.data.model / "vocabulary.json").read_text())["keys"]
    assert len(learnt) == len(keys) + 1  # the unseen operation is learnt
    session.shot("false-positive")
    # the list shows it struck through, and hides it on request
    session.open("#/anomalies")
    page.locator(f'tr.finding.normal[data-finding="{unknown["finding_id"]}"]').wait_for()
    page.locator("#hide-normal").check()
    page.locator("#filters button[type=submit]").click()
    page.wait_for_url("**hide_normal=1")
    expect(page.locator("table#findings tbody tr")).to_have_count(3)
    assert page.locator(f'tr[data-finding="{unknown["finding_id"]}"]').count() == 0


def test_filters_by_service_kind_and_time(session: Session) -> None:
    page = session.page
    session.open("#/anomalies")
    rows = page.locator("table#findings tbody tr")
    expect(rows).to_have_count(4)
    page.locator("select#service").select_option("order-service")
    page.locator("#filters button[type=submit]").click()
    page.wait_for_url("**service=order-service")
    expect(rows).to_have_count(3)
    assert {rows.nth(i).locator("td").nth(2).text_content() for i in range(3)} == {"order-service"}
    session.shot("filtered")
    page.locator("select#kind").select_option("trace")
    page.locator("#filters button[type=submit]").click()
    page.wait_for_url("**kind=trace")
    expect(rows).to_have_count(2)
    # a time range before every finding: nothing
    page.locator("select#service").select_option("")
    page.locator("input#to").fill("2023-11-14T22:30")
    page.locator("#filters button[type=submit]").click()
    page.wait_for_url("**to=*")
    expect(page.locator(".pager")).to_have_text("0 findings")
    assert rows.count() == 0


def test_a_span_named_like_html_shows_as_text_and_runs_nothing(session: Session) -> None:
    page = session.page
    session.open("#/overview")
    label = page.locator(f'svg#graph g.node[data-service="{XSS}"] text.label')
    label.wait_for()
    assert label.text_content() == XSS
    xss = next(f for f in session.findings() if f["span_id"] == session.data.xss_span)
    session.open("#/anomalies")
    row = page.locator(f'tr[data-finding="{xss["finding_id"]}"]')
    row.wait_for()
    assert XSS in row.text_content()
    row.click()
    deviating = page.locator(".span-row.deviating")
    deviating.wait_for()
    assert deviating.locator(".svc").text_content() == XSS
    assert deviating.locator(".op").text_content() == XSS
    assert XSS in page.locator("#explanation").text_content()
    session.shot("xss-as-text")
    assert page.locator("img").count() == 0  # no element was made from the name
    # the session fixture asserts no dialog opened and no console error (CSP) was logged


def test_instance_view_draws_series_with_anomaly_and_fault_windows(session: Session) -> None:
    page = session.page
    session.open("#/instances")
    link = page.locator(f'table#instances a:text-is("{INSTANCE}")')
    link.click()
    chart = page.locator('svg.chart[data-series="cpu.utilization"]')
    chart.wait_for()
    assert chart.locator("polyline.series").count() == 1
    assert chart.locator("rect.fault").count() == 1
    assert chart.locator("rect.anomaly").count() == 3
    assert page.locator('svg.chart[data-series="spans.rate_per_s"]').count() == 1
    session.shot("instance")
    # an instance finding opens the instance with the finding's window marked
    session.open("#/anomalies?kind=instance")
    page.locator(f'tr[data-finding="{SPIKE}"]').click()
    page.wait_for_url(f"**/#/instance/{INSTANCE}?finding={SPIKE}")
    expect(page.locator("#explanation .reason")).to_contain_text("cpu.utilization 0.95")
    expect(chart.locator("rect.anomaly.selected")).to_have_count(1)
    session.shot("instance-finding")


def test_a_token_needs_the_login_form(built: Data, browser: Any, tmp_path: Path) -> None:
    data = built.copy_to(tmp_path / "data")
    app, _ = app_over(data, token=TOKEN)
    context = browser.new_context()
    try:
        with running(app) as url:
            page = context.new_page()
            answer = page.goto(f"{url}/")
            assert answer.status == 401
            page.locator("input[name=token]").fill("wrong")
            page.locator("button[type=submit]").click()
            assert "Wrong token." in page.locator("body").text_content()
            page.locator("input[name=token]").fill(TOKEN)
            page.locator("button[type=submit]").click()
            page.locator("svg#graph g.node").first.wait_for()
            assert page.locator("svg#graph g.node").count() == len(SERVICES)
    finally:
        context.close()


def test_the_api_docs_page_renders_without_a_network(session: Session) -> None:
    page = session.page
    page.route(
        "**/*", lambda r: r.continue_() if r.request.url.startswith(session.url) else r.abort()
    )
    page.goto(f"{session.url}/docs")
    endpoints = page.locator("section.endpoint")
    endpoints.first.wait_for()
    text = page.locator("main").text_content()
    for path in ["/api/overview", "/api/findings/{finding_id}/feedback", "/api/traces/{trace_id}"]:
        assert path in text
    assert endpoints.count() >= 12
    session.shot("api-docs")


def test_the_overview_follows_new_data_live(session: Session) -> None:
    page = session.page
    session.open("#/overview")
    nodes = page.locator("svg#graph g.node")
    expect(nodes).to_have_count(len(SERVICES))
    sent = httpx.post(
        f"{session.url}/v1/traces",
        content=spans_body(0, 5),  # five root spans of a new service "svc"
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert sent.status_code == 200
    # the page polls every 5 s: the new service appears without a reload
    expect(page.locator('svg#graph g.node[data-service="svc"]')).to_have_count(1, timeout=15_000)
    expect(nodes).to_have_count(len(SERVICES) + 1)


def test_retrain_from_the_models_view(session: Session) -> None:
    page = session.page
    session.open("#/models")
    page.locator("#retrain-from").fill("2023-11-14T22:13")
    page.locator("#retrain-to").fill("2023-11-14T22:14")
    page.locator("#retrain button[type=submit]").click()
    expect(page.locator("#retrain-result dl.kv").first).to_be_visible(timeout=60_000)
    doc = httpx.get(f"{session.url}/api/model", timeout=30).json()
    assert doc["trained_on"]["traces"] == 300  # the normal traces of that minute
    assert doc["trained_on"]["from"].startswith("2023-11-14T22:13:20")
    session.shot("retrained")


def test_the_trace_view_shows_each_spans_log_lines_and_marks_the_finding_s(
    built: Data, browser: Any, tmp_path: Path
) -> None:
    """A span's log lines sit under it (severity, text, template), the one the finding
    names is marked, and a line's text stays text."""
    data = built.copy_to(tmp_path / "data")
    written = add_trace_logs(data)
    app, _ = app_over(data, online=False)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        with running(app) as url:
            s = Session(url, context.new_page(), data, tmp_path)
            s.open(f"#/trace/{written['trace_id']}?finding={written['finding']}")
            page = s.page
            page.locator(".log-row.marked").wait_for()
            rows = page.locator("#waterfall > div")
            kinds = [rows.nth(i).get_attribute("class") or "" for i in range(rows.count())]
            spans = [rows.nth(i).get_attribute("data-span") for i in range(rows.count())]
            at = spans.index(written["span"])  # the deviating span's row, then its two lines
            assert "span-row" in kinds[at] and all("log-row" in k for k in kinds[at + 1 : at + 3])
            assert spans[at + 1 : at + 3] == [written["span"]] * 2
            marked = page.locator(".log-row.marked")
            assert marked.count() == 1 and "ERROR" in marked.locator(".sev").text_content()
            assert XSS in marked.locator(".log-text").text_content()  # shown as text
            other = spans.index(written["other"])
            assert "log-row" in kinds[other + 1] and spans[other + 1] == written["other"]
            s.shot("trace-log-lines")
            assert s.dialogs == [] and s.errors == [], s.errors
    finally:
        context.close()
