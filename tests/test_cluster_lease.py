"""Market leases on the real NATS server (``AETHERION_TEST_NATS_URL``, default 127.0.0.1:4222):
one winner per race, takeover only after the old owner has stopped, compare-and-set renewals,
fencing tokens. Each test has a bucket of its own, deleted afterwards."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from aetherion.cluster import LeaseManager

NATS_URL = os.environ.get("AETHERION_TEST_NATS_URL", "nats://127.0.0.1:4222")


@pytest.fixture
async def bucket(nc: Client) -> AsyncIterator[str]:
    name = f"t_leases_{uuid.uuid4().hex[:12]}"
    yield name
    await nc.jetstream().delete_key_value(name)


async def managers(js: JetStreamContext, bucket: str, n: int, ttl_s: float,
                   margin_s: float | None = None) -> list[LeaseManager]:
    return [await LeaseManager.open(js, f"i{k}", ttl_s, margin_s=margin_s, bucket=bucket)
            for k in range(n)]


async def test_racing_managers_one_wins(nc: Client, bucket: str) -> None:
    ms = await managers(nc.jetstream(), bucket, 6, ttl_s=5)
    for market in ("btcusdt", "spy", "nifty"):
        got = await asyncio.gather(*(m.try_acquire(market) for m in ms))
        winners = [lease for lease in got if lease is not None]
        assert len(winners) == 1, got
        assert winners[0].still_mine()
        owners = await ms[0].owners()
        assert owners[market].owner == winners[0].owner
        assert owners[market].revision == winners[0].token
    assert sorted(await ms[3].owners()) == ["btcusdt", "nifty", "spy"]


async def test_takeover_after_ttl_and_old_owner_stops_first(nc: Client, bucket: str) -> None:
    a, b = await managers(nc.jetstream(), bucket, 2, ttl_s=1.0)
    assert (a.ttl_s, a.margin_s) == (1.0, 0.2)
    lease = await a.try_acquire("btcusdt")
    assert lease is not None and await b.try_acquire("btcusdt") is None
    for _ in range(3):  # a healthy owner keeps it past the TTL
        await asyncio.sleep(0.4)
        first_rev = lease.revision
        assert await a.renew(lease) and lease.revision > first_rev
    assert await b.try_acquire("btcusdt") is None
    stopped = time.monotonic()  # a stops renewing: paused, partitioned or dead

    lost_at: list[float] = []

    async def watch() -> None:
        while lease.still_mine():
            await asyncio.sleep(0.002)
        lost_at.append(time.monotonic())

    watcher = asyncio.create_task(watch())
    while True:
        sent = time.monotonic()
        taken = await b.try_acquire("btcusdt")
        if taken is not None:
            acked = time.monotonic()
            break
        assert sent - stopped < 3, "not taken over within 3 s of a 1 s TTL"
        await asyncio.sleep(0.01)
    await watcher
    # the old owner had stopped acting before the new one even asked successfully
    assert lost_at[0] < sent < acked
    assert lease.deadline <= sent - 0.1  # with room to spare: the margin, less one round trip
    assert 0.8 <= acked - stopped <= 2.0, acked - stopped  # the TTL, plus a little
    assert taken.token > lease.revision  # fencing: the new tenure's token is larger
    assert not await a.renew(lease) and not lease.still_mine()
    assert (await a.owners())["btcusdt"].owner == "i1"


async def test_renew_with_a_stale_revision_fails(nc: Client, bucket: str) -> None:
    js = nc.jetstream()
    (a,) = await managers(js, bucket, 1, ttl_s=5)
    lease = await a.try_acquire("spy")
    assert lease is not None
    # another writer replaced the record behind the owner's back (split brain, an operator)
    kv = await js.key_value(bucket)
    intruder = {"owner": "x", "tenure": "t", "acquired_ms": 1, "renewed_ms": 1}
    await kv.update("spy", msgspec.json.encode(intruder), last=lease.revision)
    assert lease.still_mine()  # nothing tells it until it renews
    assert not await a.renew(lease)
    assert lease.lost and not lease.still_mine() and lease.remaining_s() == 0
    assert (await a.owners())["spy"].owner == "x"
    assert not await a.release(lease)  # and it does not delete the other's lease
    assert (await a.owners())["spy"].owner == "x"


async def test_a_renewal_whose_answer_was_lost_is_recovered(nc: Client, bucket: str) -> None:
    js = nc.jetstream()
    (a,) = await managers(js, bucket, 1, ttl_s=5)
    lease = await a.try_acquire("spy")
    assert lease is not None
    # a renewal that reached the server but whose answer never came back
    kv = await js.key_value(bucket)
    record = {"owner": "i0", "tenure": lease.tenure, "acquired_ms": lease.acquired_ms,
              "renewed_ms": lease.acquired_ms + 1}
    landed = await kv.update("spy", msgspec.json.encode(record), last=lease.revision)
    assert await a.renew(lease)
    assert lease.revision > landed and lease.still_mine()


async def test_release_frees_the_market_at_once(nc: Client, bucket: str) -> None:
    a, b = await managers(nc.jetstream(), bucket, 2, ttl_s=5)
    first = await a.try_acquire("nifty")
    assert first is not None
    t0 = time.monotonic()
    assert await a.release(first) and not first.still_mine()
    second = await b.try_acquire("nifty")
    assert second is not None and time.monotonic() - t0 < 1  # no waiting for the 5 s TTL
    assert second.token > first.token
    assert not await a.release(first)  # a stale release leaves the new owner alone
    assert (await b.owners())["nifty"].owner == "i1"
    assert await a.owners() == {"nifty": (await b.owners())["nifty"]}


async def test_a_lapsed_lease_is_not_revived(nc: Client, bucket: str) -> None:
    a, b = await managers(nc.jetstream(), bucket, 2, ttl_s=2.0, margin_s=0.5)
    lease = await a.try_acquire("btcusdt")
    assert lease is not None
    await asyncio.sleep(1.6)  # past the local deadline (1.5 s), before the server's (2 s)
    assert not lease.still_mine()
    assert not await a.renew(lease)  # no write: the server still has the old record...
    assert await b.try_acquire("btcusdt") is None
    assert await a.release(lease)  # ...which the lapsed owner deletes, handing over early
    assert await b.try_acquire("btcusdt") is not None


async def test_bucket_ttl_wins_over_the_configured_one(nc: Client, bucket: str) -> None:
    first = await LeaseManager.open(nc.jetstream(), "i0", 2.0, bucket=bucket)
    second = await LeaseManager.open(nc.jetstream(), "i1", 9.0, bucket=bucket)
    assert first.ttl_s == second.ttl_s == 2.0
    assert second.margin_s == pytest.approx(0.4)
