"""Identical history GETs in flight at once share one answer; nothing else is shared."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from aetherion.api.coalesce import Coalesce


class Slow:
    """An app that answers each request after ``delay`` with its path, query and call number,
    and fails on a path containing ``fail``."""

    def __init__(self, delay: float = 0.05) -> None:
        self.calls = 0
        self.delay = delay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        n = self.calls
        await asyncio.sleep(self.delay)
        if "fail" in scope["path"] and n == 1:
            raise RuntimeError("the store went away")
        body = f"{scope['path']}?{scope['query_string'].decode()}#{n}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def get(app: Any, path: str, query: str = "", method: str = "GET") -> bytes:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(m: Message) -> None:
        sent.append(m)

    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(),
             "headers": []}
    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    return b"".join(m.get("body", b"") for m in sent[1:])


async def test_concurrent_identical_gets_run_once_and_get_the_same_bytes() -> None:
    inner = Slow()
    app = Coalesce(inner)
    got = await asyncio.gather(*(get(app, "/api/regime/btc", "limit=5") for _ in range(20)))
    assert inner.calls == 1 and set(got) == {b"/api/regime/btc?limit=5#1"}
    assert app.shared == 19 and app.inflight == {}
    # Answered: the next request asks again (nothing is cached).
    assert await get(app, "/api/regime/btc", "limit=5") == b"/api/regime/btc?limit=5#2"


async def test_another_query_method_or_path_is_not_shared() -> None:
    inner = Slow()
    app = Coalesce(inner)
    got = await asyncio.gather(
        get(app, "/api/market/candles/btc", "limit=5"),
        get(app, "/api/market/candles/btc", "limit=6"),
        get(app, "/api/market/candles/eth", "limit=5"),
        get(app, "/api/market/candles/btc", "limit=5", method="HEAD"),
        get(app, "/api/market/snapshot/btc"),  # memory, not history: never shared
        get(app, "/api/market/snapshot/btc"))
    assert inner.calls == 6 and len(set(got)) == 6 and app.shared == 0


async def test_when_the_first_fails_the_others_ask_alone() -> None:
    inner = Slow()
    app = Coalesce(inner)
    first = asyncio.create_task(get(app, "/api/decision/fail"))
    await asyncio.sleep(0.01)
    others = [asyncio.create_task(get(app, "/api/decision/fail")) for _ in range(3)]
    with pytest.raises(RuntimeError):
        await first
    got = await asyncio.gather(*others)
    assert inner.calls == 4 and len(set(got)) == 3 and app.inflight == {}
