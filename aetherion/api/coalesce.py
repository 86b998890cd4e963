"""Identical history GETs in flight at once share one answer (request coalescing).

Dashboards ask the same few URLs — each market's newest candles, regimes, decisions — and under
load each request would queue its own store query and serialize its own rows. A request that
arrives while the same path and query string are being answered waits for that answer and gets
it byte for byte. Its rows are then as old as that request's, which was in flight when it
arrived: the same as if it had come a moment earlier. Nothing is kept once the answer is sent
(no cache); a request whose leader fails or is cancelled asks alone.

It sits inside the API-key check, so every request is authorized on its own.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HISTORY_PREFIXES", "Coalesce"]

#: The stored-history endpoints (their answers come from the stores, not from memory).
HISTORY_PREFIXES = ("/api/market/trades/", "/api/market/candles/", "/api/market/features/",
                    "/api/regime/", "/api/decision/")


class Coalesce:
    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...] = HISTORY_PREFIXES) -> None:
        self.app, self.prefixes = app, prefixes
        self.inflight: dict[tuple[str, bytes], asyncio.Future[list[Message] | None]] = {}
        self.shared = 0  # requests answered with another's answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "GET"
                or not scope["path"].startswith(self.prefixes)):
            await self.app(scope, receive, send)
            return
        key = (scope["path"], scope.get("query_string", b""))
        running = self.inflight.get(key)
        if running is not None:
            theirs = await asyncio.shield(running)
            if theirs is None:  # the leader failed: ask alone
                await self.app(scope, receive, send)
                return
            self.shared += 1
            for m in theirs:
                await send(m)
            return
        self.inflight[key] = done = asyncio.get_running_loop().create_future()
        answer: list[Message] = []

        async def keep(m: Message) -> None:
            answer.append(m)

        try:
            await self.app(scope, receive, keep)
        finally:
            del self.inflight[key]
            complete = bool(answer) and not answer[-1].get("more_body", False)
            done.set_result(answer if complete else None)
        for m in answer:  # sent once the waiters have it: a slow client holds up no one
            await send(m)
