"""The dashboard: pages and assets (shipped in the package, nothing from a CDN), the local
API docs page, and the guard every request passes.

The guard (ASGI middleware) adds the security headers to every answer (a strict
Content-Security-Policy: scripts, styles and connections from this origin only, no inline
script, no framing) and, with a token, lets through only requests that carry it: as
``Authorization: Bearer <token>`` (API clients, OTLP senders) or as the session cookie the
login form sets (browsers). Everything else is answered 401; a browser asking for a page
gets the login form with it. A cookie is derived from the token (HMAC), ``HttpOnly`` and
``SameSite=Strict``; a request authorised by the cookie that changes state (any method but
GET/HEAD) must also carry ``X-Spanomaly: 1``, which a cross-site form cannot send.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spanomaly.serve.api import router
from spanomaly.serve.auth import TokenAuth
from spanomaly.serve.hooks import Online
from spanomaly.serve.writer import Writer

STATIC = Path(str(resources.files("spanomaly.serve") / "static"))
# the service graph's script and style, shared with `spanomaly graph`'s page
GRAPH_STATIC = Path(str(resources.files("spanomaly.report") / "static"))
COOKIE = "spanomaly_session"
CSRF_HEADER = b"x-spanomaly"
MAX_LOGIN_BODY = 4096
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>spanomaly: sign in</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/style.css"></head>
<body class="login"><form method="post" action="/login">
<h1>spanomaly</h1><p>{message}</p>
<input type="hidden" name="next" value="{next}">
<label>Token <input type="password" name="token" autocomplete="current-password" autofocus>
</label><button type="submit">Sign in</button></form></body></html>
"""


def session_value(token: str) -> str:
    """The session cookie's value for a token (an HMAC of it, never the token itself)."""
    return hmac.new(token.encode(), b"spanomaly-dashboard-session", hashlib.sha256).hexdigest()


def safe_next(path: str) -> str:
    """path when it stays on this server (no open redirect), else "/"."""
    local = path.startswith("/") and not path.startswith("//") and "\\" not in path
    return path if local else "/"


def login_page(message: str, next_path: str = "/", status: int = 401) -> HTMLResponse:
    """The login form (served with 401 to a browser without the token)."""
    body = _LOGIN.format(message=html.escape(message), next=html.escape(safe_next(next_path)))
    return HTMLResponse(body, status_code=status)


class Guard(TokenAuth):
    """Security headers on every answer; with a token, bearer header or session cookie."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else b""
        self.session = session_value(token).encode() if token else b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request, answer it or pass it on, adding the security headers."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    if name.decode() not in headers:
                        headers.append(name.decode(), value.decode())
            await send(message)

        if self.token:
            if scope["path"] == "/login" and scope["method"] == "POST":
                await (await self._login(receive))(scope, receive, secured)
                return
            how = self._how(scope)
            if how is None:
                if _wants_html(scope):
                    page = login_page("Sign in with the server's token.", _path_of(scope))
                    await page(scope, receive, secured)
                else:
                    await super().__call__(scope, receive, secured)  # 401, OTLP/JSON body
                return
            unsafe = scope["method"] not in ("GET", "HEAD")
            if how == "cookie" and unsafe and _header(scope, CSRF_HEADER) != b"1":
                forbidden = Response("missing X-Spanomaly header", status_code=403)
                await forbidden(scope, receive, secured)
                return
        await self.app(scope, receive, secured)

    def _how(self, scope: Scope) -> str | None:
        """'bearer' or 'cookie' for an authorised request, None otherwise."""
        if self._authorised(scope):
            return "bearer"
        cookie = _header(scope, b"cookie") or b""
        for part in cookie.split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == COOKIE.encode() and hmac.compare_digest(value, self.session):
                return "cookie"
        return None

    async def _login(self, receive: Receive) -> Response:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_LOGIN_BODY:
                return login_page("Sign-in request too large.", status=413)
            if not message.get("more_body"):
                break
        form = parse_qs(body.decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0].encode()
        next_path = (form.get("next") or ["/"])[0]
        if not hmac.compare_digest(given, self.token):
            return login_page("Wrong token.", next_path)
        response = RedirectResponse(safe_next(next_path), status_code=303)
        response.set_cookie(
            COOKIE, self.session.decode(), httponly=True, samesite="strict", path="/"
        )
        return response


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _wants_html(scope: Scope) -> bool:
    return scope["method"] == "GET" and b"text/html" in (_header(scope, b"accept") or b"")


def _path_of(scope: Scope) -> str:
    query = scope.get("query_string", b"").decode("latin-1")
    return scope["path"] + (f"?{query}" if query else "")


def install(app: FastAPI, writer: Writer, token: str | None, online: Online | None = None) -> None:
    """Add the dashboard pages, assets, API and docs to app, behind the guard."""
    app.include_router(router(writer, online))
    app.mount("/static/graph", StaticFiles(directory=GRAPH_STATIC), name="graph-static")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        """The dashboard (one page; views are #/overview, #/anomalies, ...)."""
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        """The API reference, rendered from /openapi.json by a local script."""
        return FileResponse(STATIC / "docs.html")

    app.add_middleware(Guard, token=token)
