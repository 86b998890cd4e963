"""Instance heartbeats on the real NATS server, and the cluster settings' checks."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.client import Client

from aetherion.cluster import ClusterSettings, Membership, NatsUnavailable, connect

NATS_URL = os.environ.get("AETHERION_TEST_NATS_URL", "nats://127.0.0.1:4222")


@pytest.fixture
async def bucket(nc: Client) -> AsyncIterator[str]:
    name = f"t_members_{uuid.uuid4().hex[:12]}"
    yield name
    await nc.jetstream().delete_key_value(name)


async def test_members_come_and_go(nc: Client, bucket: str) -> None:
    js = nc.jetstream()
    one = await Membership.open(js, "i1", 1.0, api_url="http://127.0.0.1:8001", bucket=bucket)
    two = await Membership.open(js, "host.b 2", 1.0, bucket=bucket)  # an id no KV key allows
    three = await Membership.open(js, "i3", 1.0, bucket=bucket)
    assert await one.members() == []
    await one.heartbeat(["spy", "btcusdt"])
    await two.heartbeat()
    await three.heartbeat(["nifty"])
    live = await two.members()
    assert [m.id for m in live] == ["host.b 2", "i1", "i3"]
    assert live[1].markets == ("btcusdt", "spy") and live[1].api_url == "http://127.0.0.1:8001"
    assert live[1].started_ms <= live[1].heartbeat_ms

    await three.leave()  # a clean exit is seen at once
    assert [m.id for m in await one.members()] == ["host.b 2", "i1"]

    stopped = time.monotonic()  # "host.b 2" stops beating, i1 goes on
    while any(m.id == "host.b 2" for m in await one.members()):
        assert time.monotonic() - stopped < 3, "a silent member still listed after 3 s"
        await one.heartbeat(["spy"])
        await asyncio.sleep(0.05)
    assert 0.5 < time.monotonic() - stopped < 2.0
    assert [(m.id, m.markets) for m in await one.members()] == [("i1", ("spy",))]


async def test_a_heartbeat_is_listed_as_soon_as_it_is_written(nc: Client, bucket: str) -> None:
    # The listing once came from a KV watcher that could end its replay early and list none.
    js = nc.jetstream()
    beats = [await Membership.open(js, f"i{i}", 5.0, bucket=bucket) for i in range(3)]
    for round_ in range(60):
        await asyncio.gather(*(b.heartbeat([f"m{round_}"]) for b in beats))
        assert [(m.id, m.markets) for m in await beats[round_ % 3].members()] == [
            (f"i{i}", (f"m{round_}",)) for i in range(3)]


async def test_a_stale_heartbeat_is_not_a_member(nc: Client, bucket: str) -> None:
    js = nc.jetstream()
    me = await Membership.open(js, "i1", 5.0, bucket=bucket)
    kv = await js.key_value(bucket)
    old = time.time_ns() // 1_000_000 - 6_000  # older than the TTL by the reader's clock
    await kv.put("ghost", msgspec.json.encode({"id": "ghost", "started_ms": old,
                                               "heartbeat_ms": old}))
    await kv.put("junk", b"not json")
    await me.heartbeat()
    assert [m.id for m in await me.members()] == ["i1"]


def test_cluster_settings_refuse_unsafe_values() -> None:
    s = ClusterSettings("nats://127.0.0.1:4222")
    assert s.instance_id.endswith(f"-{os.getpid()}") and s.lease_ttl_s == 5.0
    with pytest.raises(ValueError, match="third"):
        ClusterSettings("nats://x", heartbeat_s=2.0)
    with pytest.raises(ValueError, match="lease_ttl_s"):
        ClusterSettings("nats://x", lease_ttl_s=0.5)
    with pytest.raises(ValueError, match="instance_id"):
        ClusterSettings("nats://x", instance_id="")


async def test_unreachable_nats_is_a_clear_error() -> None:
    with pytest.raises(NatsUnavailable, match="nats-server -js"):
        await connect("nats://127.0.0.1:9", "aetherion-tests", timeout_s=1)
