"""Back-off and watchdog shared by the live connectors (aetherion.ingest.backoff)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from aetherion.ingest.backoff import Backoff, SilentConnection, Watchdog


def test_backoff_grows_caps_and_jitters() -> None:
    b = Backoff(initial_s=1.0, cap_s=8.0, factor=2.0, jitter=0.5, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    bases = [1, 2, 4, 8, 8, 8, 8, 8]
    for d, base in zip(delays, bases, strict=True):
        assert base * 0.5 <= d <= base
    assert len({round(d, 6) for d in delays[3:]}) > 1  # jittered, not in step


def test_backoff_resets_after_healthy_connection_only() -> None:
    b = Backoff(initial_s=1.0, cap_s=60.0, jitter=0.0, healthy_s=0.05)
    assert [b.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
    b.connected()  # a short-lived connection does not reset
    assert b.next_delay() == 8.0
    b.connected()
    time.sleep(0.06)
    assert b.next_delay() == 1.0


def test_backoff_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        Backoff(initial_s=0)
    with pytest.raises(ValueError):
        Backoff(initial_s=2, cap_s=1)


async def test_watchdog_cancels_a_silent_reader() -> None:
    dog = Watchdog(0.1)
    cancelled = asyncio.Event()

    async def reader() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cancelled.set()

    t0 = time.monotonic()
    with pytest.raises(SilentConnection):
        await dog.guard(reader())
    assert 0.09 <= time.monotonic() - t0 < 1.0
    assert cancelled.is_set() and dog.fired == 1


async def test_watchdog_lets_a_fed_reader_finish() -> None:
    dog = Watchdog(0.5)  # far above the feeds' gaps: a busy CI machine once stalled 0.1 s

    async def reader() -> int:
        for _ in range(10):
            await asyncio.sleep(0.03)
            dog.feed()
        return 42

    assert await dog.guard(reader()) == 42  # 0.3 s in all, never 0.5 s silent
    assert dog.fired == 0
