"""The dashboard's guard and pages: token on every route (bearer header or login cookie),
the security headers, assets shipped in the package, the local API docs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spanomaly.serve.app import ServeSettings, create_app
from spanomaly.serve.dashboard import COOKIE, CSP, STATIC, safe_next, session_value
from spanomaly.store.duckdb import DuckDBStore
from tests.serve.dashboard_data import running
from tests.serve.test_app import body as spans_body
from tests.serve.test_online_hook import FakeOnline

TOKEN = "s3cret-token"
HTML = {"Accept": "text/html"}


def _app(tmp_path: Path, token: str | None) -> object:
    """An app over an empty store with a fake online detector (its routes are guarded too)."""
    settings = ServeSettings(db=tmp_path / "s.duckdb", decode_processes=0, token=token)
    return create_app(settings, DuckDBStore(tmp_path / "s.duckdb"), online=FakeOnline())


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[str, object]]:
    """A server with a token: its URL and app."""
    app = _app(tmp_path, TOKEN)
    with running(app) as url:
        yield url, app


def every_route(app: object) -> list[tuple[str, str]]:
    """(method, path) of every route the app answers, path parameters filled in."""
    doc = app.openapi()  # type: ignore[attr-defined]
    routes = [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, ops in doc["paths"].items()
        for method in ops
    ]
    pages = ["/", "/docs", "/openapi.json", "/static/app.js", "/static/style.css", "/nowhere"]
    return routes + [("GET", p) for p in pages] + [("POST", "/login")]


def test_every_route_answers_401_without_the_token(guarded: tuple) -> None:
    url, app = guarded
    routes = every_route(app)
    assert len(routes) > 20
    with httpx.Client(base_url=url, timeout=30) as c:
        for method, path in routes:
            r = c.request(method, path, json={} if method == "POST" else None)
            assert r.status_code == 401, (method, path, r.status_code)
            r = c.request(method, path, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401, (method, path, r.status_code)
        # a browser asking for a page gets the login form with its 401
        page = c.get("/", headers=HTML)
        assert page.status_code == 401 and '<form method="post" action="/login">' in page.text
        # with the token the same routes answer (whatever their answer to an empty request)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for method, path in routes:
            if path == "/login":
                continue
            r = c.request(method, path, headers=auth)
            assert r.status_code != 401 and r.status_code < 500, (method, path, r.status_code)
        assert c.get("/api/findings", headers=auth).json() == {"total": 0, "items": []}


def test_login_sets_a_session_cookie_and_state_changes_need_the_header(guarded: tuple) -> None:
    url, _ = guarded
    with httpx.Client(base_url=url, timeout=30) as c:
        wrong = c.post("/login", data={"token": "nope", "next": "/"})
        assert wrong.status_code == 401 and "Wrong token." in wrong.text
        assert COOKIE not in c.cookies
        assert [safe_next(p) for p in ["/#/trace/1", "//evil", "/\\evil", "http://evil"]] == [
            "/#/trace/1", "/", "/", "/",
        ]  # fmt: skip
        ok = c.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert TOKEN not in cookie and c.cookies[COOKIE] == session_value(TOKEN)
        assert c.get("/api/overview").status_code == 200
        assert c.get("/", headers=HTML).status_code == 200
        # a cookie alone cannot change state (a cross-site form could send it)
        assert c.post("/api/findings/x/feedback").status_code == 403
        r = c.post("/api/findings/x/feedback", headers={"X-Spanomaly": "1"})
        assert r.status_code == 200 and r.json() == {"finding": "x"}  # to the detector
        # the OTLP senders' bearer token needs no such header
        sent = c.post(
            "/v1/traces",
            content=spans_body(0, 3),
            headers={"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {TOKEN}"},
        )
        assert sent.status_code == 200


def test_security_headers_on_every_answer(tmp_path: Path) -> None:
    app = _app(tmp_path, None)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        for path in ["/", "/docs", "/api/overview", "/static/app.js", "/openapi.json", "/x"]:
            r = c.get(path)
            assert r.headers["content-security-policy"] == CSP, path
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-frame-options"] == "DENY"
        assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP
        # no token: no login, and GET never changes state
        assert c.get("/api/findings/x/feedback").status_code == 405
        assert c.get("/api/model/retrain").status_code == 405


def test_pages_load_only_local_assets() -> None:
    texts = {p.name: p.read_text() for p in STATIC.iterdir()}
    assert {"index.html", "app.js", "style.css", "docs.html", "docs.js"} <= set(texts)
    for name, text in texts.items():
        assert not re.search(r"(src|href)=\"(https?:)?//", text), name
        html_sinks = r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write|eval\("
        assert not re.search(html_sinks, text), name
        if name.endswith(".html"):  # no inline script, no inline event handler
            assert "<script>" not in text and not re.search(r"<[^>]*\son[a-z]+=", text), name
