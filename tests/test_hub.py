"""The WebSocket hub over real sockets: snapshot first, filtering, and dropping a slow client."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect

from aetherion.api.hub import Hub
from aetherion.domain import parse_time
from aetherion.payloads import encode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Hub, str]]:
    hub = Hub("market", **getattr(request, "param", {"queue_size": 50}))
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(sock: WebSocket) -> None:
        await sock.accept()
        raw = sock.query_params.get("markets")
        wanted = frozenset(raw.split(",")) if raw else None
        await hub.serve(sock, wanted, lambda w: [
            encode("snapshot", m, {}) for m in ("a", "b") if w is None or m in w])

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None, lifespan="off",
                                           timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield hub, f"ws://127.0.0.1:{port}/ws"
    server.should_exit = True
    await task


async def wait_clients(hub: Hub, n: int) -> None:
    for _ in range(500):
        if hub.client_count == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{hub.client_count} clients, expected {n}")


async def test_snapshot_first_then_filtered_stream(served: tuple[Hub, str]) -> None:
    hub, url = served
    async with connect(url + "?markets=b") as ws:
        await wait_clients(hub, 1)
        assert json.loads(await ws.recv()) == {"type": "snapshot", "market": "b"}
        hub.publish("a", encode("tick", "a", {"price": 1.0}))
        hub.publish("b", encode("tick", "b", {"price": 2.0}))
        assert json.loads(await ws.recv()) == {"type": "tick", "market": "b", "price": 2.0}
    await wait_clients(hub, 0)


async def test_slow_client_dropped_fast_one_kept(served: tuple[Hub, str]) -> None:
    await _drop_slow(*served)


@pytest.mark.parametrize("served", [{"queue_size": 100_000}], indirect=True)
async def test_client_that_pauses_gets_everything_in_order(served: tuple[Hub, str]) -> None:
    """A client that stops reading long enough for its socket to fill is sent the rest later,
    in order, from its backlog."""
    hub, url = served
    pad = "x" * 20_000
    async with connect(url, max_queue=1, compression=None) as ws:  # pad must not shrink
        await wait_clients(hub, 1)
        for i in range(1000):  # 20 MB: more than the socket buffers take
            hub.publish("a", encode("tick", "a", {"i": i, "pad": pad}))
        assert any(c.busy for c in hub._clients)  # a send is waiting on the socket
        got = [json.loads(await ws.recv()) for _ in range(1002)]
    assert [m["type"] for m in got[:2]] == ["snapshot", "snapshot"]
    assert [m["i"] for m in got[2:]] == list(range(1000))
    assert hub.dropped_clients == 0


@pytest.mark.parametrize("served", [{"queue_size": 1_000_000, "send_timeout": 0.5}],
                         indirect=True)
async def test_client_whose_send_times_out_is_dropped(served: tuple[Hub, str]) -> None:
    """A backlog far too big to fill: the send that waits longer than the timeout drops it."""
    await _drop_slow(*served, burst=400)


async def _drop_slow(hub: Hub, url: str, burst: int = 0) -> None:
    """Publish to a fast client and a slow one until the hub drops the slow one (after ``burst``
    messages, no more are published: only a timeout can drop it then)."""
    # The slow client: a raw socket with a tiny receive buffer that completes the handshake and
    # then never reads.
    port = int(url.split(":")[2].split("/")[0])
    with socket.socket() as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", port))
        await _publish_until_dropped(hub, url, slow, burst)


async def _publish_until_dropped(hub: Hub, url: str, slow: socket.socket, burst: int) -> None:
    slow.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    async with connect(url) as fast:
        await wait_clients(hub, 2)
        pad = "x" * 20_000
        received = 0

        async def read_fast() -> None:
            nonlocal received
            while True:
                received += json.loads(await fast.recv())["type"] == "tick"

        reader = asyncio.create_task(read_fast())
        sent = 0
        while hub.dropped_clients == 0 and sent < (burst or 5_000):
            hub.publish("a", encode("tick", "a", {"i": sent, "pad": pad}))
            sent += 1
            await asyncio.sleep(0.0005)
        for _ in range(300 if burst else 0):
            if hub.dropped_clients:
                break
            await asyncio.sleep(0.01)
        assert hub.dropped_clients == 1
        await wait_clients(hub, 1)
        for _ in range(1000):
            if received == sent:
                break
            await asyncio.sleep(0.01)
        reader.cancel()
        assert received == sent  # the fast client lost nothing


@pytest.mark.parametrize(("raw", "ms"), [
    ("1732442400123", 1732442400123),
    ("2024-11-24T10:00:00Z", 1732442400000),
    ("2024-11-24T10:00:00", 1732442400000),
    ("2024-11-24T11:00:00+01:00", 1732442400000),
])
def test_parse_time(raw: str, ms: int) -> None:
    assert parse_time("since", raw) == ms


@pytest.mark.parametrize("raw", ["²", "-²", "12²", "yesterday"])
def test_parse_time_refuses_what_is_no_time(raw: str) -> None:
    """A ValueError naming the parameter (the API answers it 422, the CLI in one line)."""
    with pytest.raises(ValueError, match="since: .* is neither epoch milliseconds nor"):
        parse_time("since", raw)
