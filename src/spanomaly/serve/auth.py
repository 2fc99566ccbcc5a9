"""Bearer-token authentication of the collector, the API and the dashboard (ASGI)."""

from __future__ import annotations

import hmac

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from spanomaly.ingest import receiver


class TokenAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <token>`` (else 401)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass authorised requests on; answer 401 to the others."""
        if scope["type"] == "http" and not self._authorised(scope):
            headers = dict(scope["headers"])
            ctype = headers.get(b"content-type", b"").decode("latin-1")
            media = receiver.PROTOBUF if ctype.startswith(receiver.PROTOBUF) else None
            body, content_type = receiver.status_body(
                401, "missing or wrong bearer token (Authorization: Bearer <token>)", media
            )
            response = Response(
                body,
                status_code=401,
                media_type=content_type,
                headers={"WWW-Authenticate": 'Bearer realm="spanomaly"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorised(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.strip().partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credentials.strip(), self.token
                )
        return False
