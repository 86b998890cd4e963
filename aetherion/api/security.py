"""Access control: with ``AETHERION_API_KEY`` set, every REST and WebSocket endpoint but
``/healthz`` and the dashboard page (``/``, ``/static/*``) needs the key.

REST: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``; WebSockets: the same headers or a
``token`` query parameter. Compared in constant time. A refused request gets 401; a refused
WebSocket is accepted and closed at once with code 1008 (policy violation). The key is never
logged or echoed.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs, urlsplit

import structlog
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ApiKeyMiddleware", "WebSocketGate"]

log = structlog.get_logger(__name__)

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


class WebSocketGate:
    """WebSockets from allowed origins only, and no more than ``max_clients`` open at once.

    A browser's ``Origin`` must be the page's own (same host) or one of ``origins`` (``*``: any);
    clients that send none (not browsers) pass. A refused origin is closed with 1008, a connection
    beyond the limit with 1013 (try again later). ``counts`` (shared with the metrics) holds the
    open connections and the refusals by reason; refusals are logged.
    """

    def __init__(self, app: ASGIApp, origins: tuple[str, ...], max_clients: int,
                 counts: dict[str, int]) -> None:
        self.app = app
        self.origins = frozenset(origins)
        self.max_clients = max_clients
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        if not self._origin_ok(scope):
            await self._refuse("origin", 1008, "origin not allowed", receive, send)
        elif self.counts["open"] >= self.max_clients:
            await self._refuse("limit", 1013, "too many connections", receive, send)
        else:
            self.counts["open"] += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.counts["open"] -= 1

    def _origin_ok(self, scope: Scope) -> bool:
        headers: dict[bytes, bytes] = dict(scope.get("headers", ()))
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/")
        if not origin or "*" in self.origins or origin in self.origins:
            return True
        return urlsplit(origin).netloc == headers.get(b"host", b"").decode("latin-1")

    async def _refuse(self, why: str, code: int, reason: str, receive: Receive,
                      send: Send) -> None:
        self.counts[why] += 1
        log.warning("websocket refused", reason=reason, open=self.counts["open"])
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code, "reason": reason})
