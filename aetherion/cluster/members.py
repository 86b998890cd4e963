"""Which instances are alive: heartbeats in a JetStream KV bucket.

Each instance writes its record (``aeth_instances``, key = the encoded instance id) every
heartbeat: JSON ``{"id", "started_ms", "heartbeat_ms", "markets", "api_url"}``. The bucket's TTL
removes the record of an instance that stopped; readers also drop a record whose heartbeat is
older than the TTL by their own clock, so a bucket created with a longer TTL, or a reader that
lists while the server has not expired the key yet, never shows a dead instance as a member.

Instance ids must be unique: two instances with one id overwrite each other's record here (their
leases stay apart, as each acquisition has its own tenure).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from aetherion.cluster._nats import bucket_keys, open_bucket
from aetherion.cluster.keys import encode_token

__all__ = ["BUCKET", "Member", "Membership"]

log = structlog.get_logger(__name__)

BUCKET = "aeth_instances"


class Member(msgspec.Struct, frozen=True):
    """One instance as its last heartbeat described it (times: its wall clock, epoch ms)."""

    id: str
    started_ms: int
    heartbeat_ms: int
    markets: tuple[str, ...] = ()  # the markets it held at that heartbeat
    api_url: str | None = None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Membership:
    """This instance's heartbeat and the list of live instances. Use :meth:`open`."""

    def __init__(self, js: JetStreamContext, bucket: str, kv: KeyValue, instance_id: str,
                 ttl_s: float, api_url: str | None) -> None:
        self._js, self._bucket, self._kv = js, bucket, kv
        self.instance_id = instance_id
        self.ttl_s = ttl_s
        self.api_url = api_url
        self.started_ms = _now_ms()

    @classmethod
    async def open(cls, js: JetStreamContext, instance_id: str, ttl_s: float = 5.0, *,
                   api_url: str | None = None, bucket: str = BUCKET,
                   replicas: int = 1) -> Membership:
        """Bind to (or create) the instances bucket; its TTL is the bucket's (``open_bucket``)."""
        kv, ttl = await open_bucket(js, bucket, ttl_s, "AETHERION live instances", replicas)
        return cls(js, bucket, kv, instance_id, ttl, api_url)

    async def heartbeat(self, markets: Iterable[str] = ()) -> None:
        """Say this instance is alive and holds ``markets``; beat well within the TTL."""
        me = Member(self.instance_id, self.started_ms, _now_ms(), tuple(sorted(markets)),
                    self.api_url)
        await self._kv.put(encode_token(self.instance_id), msgspec.json.encode(me))

    async def leave(self) -> None:
        """Remove this instance's record (on a clean shutdown; a crash lets it expire)."""
        await self._kv.delete(encode_token(self.instance_id))

    async def _read(self, key: str) -> Member | None:
        try:
            entry = await self._kv.get(key)
            return msgspec.json.decode(entry.value or b"", type=Member)
        except KeyNotFoundError:
            return None  # expired or left between the listing and the read
        except msgspec.DecodeError:
            log.warning("unreadable instance record", key=key)
            return None

    async def members(self) -> list[Member]:
        """The live instances, by id."""
        keys = await bucket_keys(self._js, self._bucket)
        oldest = _now_ms() - int(self.ttl_s * 1000)
        found = await asyncio.gather(*(self._read(k) for k in keys))
        return sorted((m for m in found if m is not None and m.heartbeat_ms >= oldest),
                      key=lambda m: m.id)
