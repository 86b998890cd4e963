"""Shared fixtures: real database servers on loopback.

- ``mysql_url``: a fresh database on the MariaDB/MySQL server at ``AETHERION_TEST_MYSQL_URL``
  (default ``mysql+asyncmy://root@127.0.0.1:3306``), dropped afterwards. With ``CI=true`` a
  missing server fails the test; elsewhere the test is skipped with the reason.
- ``mongo_url``: ``AETHERION_TEST_MONGO_URL``, or an ``nx-27017`` MongoDB wire-protocol server
  started on a free port for the session.
- ``sql_url``: each SQL backend in turn (embedded SQLite, then MySQL).
- ``own_nx``: an ``nx-27017`` server of the test's own, which the test may stop and start again.
- ``store``: each market store in turn (SQL on SQLite, SQL on MySQL, MongoDB).
- ``nc``: a client of the NATS server (``AETHERION_TEST_NATS_URL``) the cluster tests use.
- ``TcpProxy``: a loopback TCP relay in front of a real server; ``stop()`` makes the server
  unreachable (refused connections, live ones cut), ``start()`` brings it back on the same port.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, sync_playwright
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from aetherion.storage.market import MarketStore, MongoMarketStore, SqlMarketStore
from aetherion.storage.state import StateStore

MYSQL_SERVER = os.environ.get("AETHERION_TEST_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mysql_admin(sql: str) -> None:
    """Run one statement on the server, from any context (a thread of its own, its own loop)."""

    async def go() -> None:
        engine = create_async_engine(str(make_url(MYSQL_SERVER).set(database="")))
        try:
            async with engine.begin() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, go()).result()


@pytest.fixture
def mysql_url() -> Iterator[str]:
    name = f"aeth_test_{uuid.uuid4().hex[:10]}"
    try:
        _mysql_admin(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    except Exception as e:  # any failure to reach the server
        if os.environ.get("CI") == "true":
            pytest.fail(f"MySQL test server at {MYSQL_SERVER} is required in CI: {e}")
        pytest.skip(f"no MySQL server at {MYSQL_SERVER} ({e}); set AETHERION_TEST_MYSQL_URL")
    yield str(make_url(MYSQL_SERVER).set(database=name))
    _mysql_admin(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(params=["sqlite", "mysql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/state.db"
    url: str = request.getfixturevalue("mysql_url")
    return url


class NxServer:
    """An ``nx-27017`` process: a MongoDB wire-protocol server over SQLite files."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        exe = shutil.which("nx-27017", path=str(Path(sys.executable).parent)) or "nx-27017"
        self.proc = subprocess.Popen(
            [exe, "--host", "127.0.0.1", "-p", str(self.port), "--data-dir", str(self.data_dir),
             "--log-file", str(self.data_dir / "nx.log"),
             "--pid-file", str(self.data_dir / "nx.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nx-27017 exited with {self.proc.returncode}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("nx-27017 did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def nx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NxServer]:
    server = NxServer(tmp_path_factory.mktemp("nx27017"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mongo_url(request: pytest.FixtureRequest) -> str:
    """A MongoDB URL; each test gets its own database through ``AETHERION_MONGO_DB``-style
    names chosen by the test (see ``mongo_db``)."""
    given = os.environ.get("AETHERION_TEST_MONGO_URL")
    if given:
        return given
    server: NxServer = request.getfixturevalue("nx_server")
    return server.url


@pytest.fixture
def mongo_db() -> str:
    return f"aeth_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def own_nx(tmp_path: Path) -> Iterator[NxServer]:
    data = tmp_path / "nx"
    data.mkdir()
    server = NxServer(data)
    server.start()
    yield server
    server.stop()


class TcpProxy:
    """Relays ``127.0.0.1:port`` to ``target``, in the test's event loop."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            await self._server.wait_closed()
            self._server = None
        for t in list(self._relays):
            t.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
            self._writers |= {writer, up_w}
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        except (OSError, asyncio.CancelledError):
            pass  # the proxy is stopping, or the target is gone: cut the client off
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            self._relays.discard(task)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            dst.transport.abort()


@pytest.fixture
async def mysql_proxy(mysql_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A proxy in front of the test's MySQL database, and the database's URL through it."""
    u = make_url(mysql_url)
    proxy = TcpProxy(u.host or "127.0.0.1", u.port or 3306)
    await proxy.start()
    yield proxy, str(u.set(host="127.0.0.1", port=proxy.port))
    await proxy.stop()


class Proxy:
    """A ``TcpProxy`` on an event loop of its own thread (the test itself is synchronous)."""

    def __init__(self, host: str, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = TcpProxy(host, port)
        self.port = self.proxy.port
        self.start()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> None:
        self._call(self.proxy.start())

    def stop(self) -> None:
        self._call(self.proxy.stop())

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def sql_proxy(mysql_url: str) -> Iterator[Proxy]:
    """A threaded proxy in front of the test's MySQL server, for a server run as a subprocess."""
    u = make_url(mysql_url)
    proxy = Proxy(u.host or "127.0.0.1", u.port or 3306)
    yield proxy
    proxy.close()


CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright's own browsers are never fetched
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(params=["sqlite", "mysql", "mongo"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MarketStore]:
    """Each market store in turn: SQL tables on SQLite and on MySQL, then MongoDB."""
    if request.param == "mongo":
        url = request.getfixturevalue("mongo_url")
        mongo = await MongoMarketStore.open(url, request.getfixturevalue("mongo_db"))
        yield mongo
        await mongo.client.drop_database(mongo.db.name)
        await mongo.close()
        return
    url = (f"sqlite+aiosqlite:///{tmp_path}/m.db" if request.param == "sqlite"
           else request.getfixturevalue("mysql_url"))
    state = await StateStore.open(url)
    yield SqlMarketStore(state.engine)
    await state.close()


NATS_URL = os.environ.get("AETHERION_TEST_NATS_URL", "nats://127.0.0.1:4222")


@pytest.fixture
async def nc() -> AsyncIterator[Any]:
    """A client of the NATS server (JetStream) the cluster tests run against; none: fail."""
    from aetherion.cluster import NatsUnavailable, connect

    try:
        client = await connect(NATS_URL, "aetherion-tests", timeout_s=3)
    except NatsUnavailable as e:
        pytest.fail(f"the cluster tests need NATS with JetStream at {NATS_URL}: {e}")
    yield client
    await client.close()
