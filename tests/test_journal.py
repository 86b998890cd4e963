"""While a store fails, the writer's rows reach the disk journal within about a second, and a
stop does not wait for the store: a kill loses at most that second, a stop nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest

from aetherion.config import Settings
from aetherion.storage.writer import BufferedWriter

SPILL_MS = 1000
SLACK_S = 0.75  # a shared 2-core machine: the event loop and fsync may be late


def journal(spool: Path) -> list[int]:
    """Every row in the journal files (read while the writer may be appending)."""
    out: list[int] = []
    for path in sorted(spool.rglob("spill-*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                out.extend(msgspec.json.decode(line, type=tuple[str, list[int]])[1])
            except msgspec.DecodeError:  # a line being written
                pass
    return out


async def down(rows: list[int]) -> None:
    raise ConnectionRefusedError("store unreachable")


def settings(spill_ms: int = SPILL_MS) -> Settings:
    return Settings(store_flush_ms=50, store_batch_size=20, store_spill_after_ms=spill_ms)


async def feed_and_watch(writer: BufferedWriter, spool: Path, seconds: float) -> tuple[float, int]:
    """Put a row every 50 ms: the longest time a row took to appear in the journal, and the
    number of rows put."""
    put_at: dict[int, float] = {}
    seen_at: dict[int, float] = {}
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end or len(seen_at) < len(put_at):
        assert time.monotonic() < end + 5, f"rows never journaled: {set(put_at) - set(seen_at)}"
        if time.monotonic() < end:
            writer.put("n", [i])
            put_at[i] = time.monotonic()
            i += 1
        await asyncio.sleep(0.05)
        now = time.monotonic()
        for row in journal(spool):
            seen_at.setdefault(row, now)
    return max(seen_at[r] - put_at[r] for r in put_at), i


async def test_rows_reach_the_journal_within_a_second_while_the_store_fails(
    tmp_path: Path,
) -> None:
    writer = BufferedWriter("w", {"n": (int, down)}, settings(), tmp_path / "spool")
    writer.start()
    worst, n = await feed_and_watch(writer, tmp_path / "spool", 4.0)
    print(f"store down: slowest row journaled after {worst:.2f} s")
    assert worst < SPILL_MS / 1000 + SLACK_S, f"a row took {worst:.2f} s to reach the journal"
    assert writer.errors > 0 and writer.in_memory == 0
    started = time.monotonic()
    await writer.close(grace_s=15.0)  # the store fails: one more try, not the whole grace
    assert time.monotonic() - started < SPILL_MS / 1000 + SLACK_S
    assert sorted(journal(tmp_path / "spool")) == list(range(n)), "a row journaled twice or lost"
    assert writer.backlog == n


async def test_a_write_that_hangs_counts_as_failing(tmp_path: Path) -> None:
    """No error, no answer (a cut network): after ``spill_after`` the rows waiting, the batch
    being written included, are journaled; a stop does not wait; each row journaled once."""
    async def hangs(rows: list[int]) -> None:
        await asyncio.Event().wait()

    writer = BufferedWriter("w", {"n": (int, hangs)}, settings(), tmp_path / "spool")
    writer.start()
    worst, n = await feed_and_watch(writer, tmp_path / "spool", 3.0)
    print(f"write hangs: slowest row journaled after {worst:.2f} s")
    assert worst < 2 * SPILL_MS / 1000 + SLACK_S  # noticed after a second, journaled by the next
    assert writer.errors == 0 and writer.failing
    started = time.monotonic()
    await writer.close(grace_s=15.0)
    assert time.monotonic() - started < SPILL_MS / 1000 + SLACK_S
    assert sorted(journal(tmp_path / "spool")) == list(range(n)), "a row journaled twice or lost"


async def test_the_journal_is_written_back_once_the_store_answers(tmp_path: Path) -> None:
    """Down, then up: every row reaches the store, each once; the journal is emptied."""
    stored: list[int] = []
    up = asyncio.Event()

    async def flaky(rows: list[int]) -> None:
        if not up.is_set():
            raise ConnectionRefusedError("store unreachable")
        stored.extend(rows)

    writer = BufferedWriter("w", {"n": (int, flaky)}, settings(), tmp_path / "spool")
    writer.start()
    _, n = await feed_and_watch(writer, tmp_path / "spool", 1.5)
    writer.put("n", list(range(n, n + 10)))  # still in memory when the store comes back
    up.set()
    await writer.close()  # in the back-off: the stop tries again at once
    assert sorted(stored) == list(range(n + 10)) and writer.backlog == 0
    assert not list(tmp_path.rglob("spill-*.jsonl"))


@pytest.mark.parametrize("write_s", [0.0, 0.02])
async def test_a_healthy_store_never_touches_the_disk(tmp_path: Path, write_s: float) -> None:
    stored: list[int] = []

    async def ok(rows: list[int]) -> None:
        await asyncio.sleep(write_s)
        stored.extend(rows)

    writer = BufferedWriter("w", {"n": (int, ok)}, settings(200),
                            tmp_path / "spool")
    writer.start()
    for i in range(0, 2000, 10):
        writer.put("n", list(range(i, i + 10)))
        await asyncio.sleep(0.005)
    await writer.close()
    assert sorted(stored) == list(range(2000)) and writer.spilled == 0
    assert not (tmp_path / "spool").exists()


async def test_start_up_waits_for_the_journal_unless_the_store_is_down(tmp_path: Path) -> None:
    """What an earlier run journaled is in the store before start-up reads it; a store that
    is down is not waited for."""
    first = BufferedWriter("w", {"n": (int, down)}, settings(), tmp_path / "spool")
    first.start()
    first.put("n", list(range(5000)))
    await first.close(grace_s=0.0)
    stored: list[int] = []

    async def ok(rows: list[int]) -> None:
        stored.extend(rows)

    again = BufferedWriter("w", {"n": (int, down)}, settings(), tmp_path / "spool")
    again.start()
    started = time.monotonic()
    assert not await again.journal_written(15.0)
    assert time.monotonic() - started < SPILL_MS / 1000 + SLACK_S
    await again.close(grace_s=0.0)
    last = BufferedWriter("w", {"n": (int, ok)}, settings(), tmp_path / "spool")
    last.start()
    assert await last.journal_written(15.0)
    assert sorted(stored) == list(range(5000))  # once each
    await last.close()


async def test_rows_stay_in_memory_when_the_journal_cannot_be_written(tmp_path: Path) -> None:
    stored: list[int] = []
    up = asyncio.Event()

    async def flaky(rows: list[int]) -> None:
        if not up.is_set():
            raise ConnectionRefusedError("store unreachable")
        stored.extend(rows)

    (tmp_path / "spool").write_text("not a folder")
    writer = BufferedWriter("w", {"n": (int, flaky)}, settings(), tmp_path / "spool")
    writer.start()
    for i in range(30):
        writer.put("n", [i])
        await asyncio.sleep(0.05)
    assert writer.failing and writer.spilled == 0 and writer.in_memory == 30
    up.set()
    await writer.close()
    assert sorted(stored) == list(range(30))
