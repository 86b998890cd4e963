"""Access control: with ``AETHERION_API_KEY`` set, every REST and WebSocket endpoint but
``/healthz`` and the dashboard page (``/``, ``/static/*``) needs the key.

REST: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``; WebSockets: the same headers or a
``token`` query parameter. Compared in constant time. A refused request gets 401; a refused
WebSocket is accepted and closed at once with code 1008 (policy violation). The key is never
logged or echoed.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ApiKeyMiddleware"]

OPEN = ("/healthz",)


def _is_open(path: str) -> bool:
    return path in OPEN or path == "/" or path.startswith("/static/")


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app = app
        self.key = key.encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.key is None or scope["type"] not in ("http", "websocket")
                or _is_open(scope["path"]) or self._allowed(scope)):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http":
            refuse = JSONResponse({"detail": "missing or wrong API key"}, status_code=401,
                                  headers={"WWW-Authenticate": "Bearer"})
            await refuse(scope, receive, send)
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong API key"})

    def _allowed(self, scope: Scope) -> bool:
        assert self.key is not None  # noqa: S101 - checked by the caller
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None and scope["type"] == "websocket":
            token = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
            given = token[0] if token else None
        return given is not None and hmac.compare_digest(given.encode(), self.key)
