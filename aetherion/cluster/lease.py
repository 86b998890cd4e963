"""Market ownership by lease in a JetStream KV bucket.

One key per market (``aeth_leases``, key = the encoded market id) holds the owner's record,
JSON ``{"owner", "tenure", "acquired_ms", "renewed_ms"}``. The owner creates the key (only if
absent: one of any number of racing instances wins), renews it with compare-and-set on the last
revision, and deletes it on release. Nobody else may write it.

Expiry is the bucket's: the bucket has a TTL (its stream's ``max_age``), so the server removes a
key that was not renewed for ``ttl`` seconds, and only then can another instance create it. The
alternative, owner-written times checked by readers, would take the takeover decision on the
readers' clocks and leave a dead owner's key in place for someone to delete with a second
compare-and-set; with the TTL the server alone decides and a key that exists is held.

An owner does not wait for the server to tell it that it lost: its local deadline is
``sent + ttl - margin``, where ``sent`` is the monotonic time at which the last successful renew
(or the create) was sent. The server stamps that write no earlier than it was sent and expires
it ``ttl`` later, so the deadline passes ``margin`` seconds before any other instance can take
the market; :meth:`Lease.still_mine` is false from then on, for good (a lapsed lease is never
revived, even if a late renew succeeds). The margin covers the owner's own stall between a check
and the act, and drift between the clocks. The server expires by its wall clock: a NATS host
whose clock steps forward by more than the margin can shorten a lease.

Fencing: :attr:`Lease.token` is the revision at which the lease was acquired. Revisions are the
bucket stream's sequence numbers, so each new tenure of a market has a larger token than every
earlier one; a store that remembers the largest token it has seen per market refuses writes
carrying a smaller one, i.e. from an owner that was paused past its lease. (Deleting the bucket
restarts the sequence: purge keys instead.)

Typical owner loop, every ``manager.renew_every_s``::

    if not await manager.renew(lease) and not lease.still_mine():
        stop the market's pipeline, then await manager.release(lease)
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from aetherion.cluster._nats import TRANSIENT, bucket_keys, open_bucket
from aetherion.cluster.keys import decode_token, encode_token

__all__ = ["BUCKET", "Lease", "LeaseManager", "Owner"]

log = structlog.get_logger(__name__)

BUCKET = "aeth_leases"
_WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed compare-and-set


class _Record(msgspec.Struct, frozen=True):
    owner: str
    tenure: str  # random per acquisition: tells this tenure from an earlier one of the owner
    acquired_ms: int
    renewed_ms: int


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a market's lease, as any instance reads it (for status pages)."""

    owner: str
    acquired_ms: int  # wall clock of the owner when it took the market
    renewed_ms: int  # wall clock of the owner at its last renewal
    revision: int

    def age_s(self, now_ms: int) -> float:
        """How long the owner has held the market."""
        return max(0, now_ms - self.acquired_ms) / 1000


@dataclass(slots=True)
class Lease:
    """A market held by this instance. Act on the market only while :meth:`still_mine`."""

    market: str
    owner: str
    token: int  # fencing token: the revision at acquisition, larger for every later tenure
    revision: int  # the latest revision written, for the next compare-and-set
    acquired_ms: int
    tenure: str
    deadline: float  # time.monotonic() after which this instance is no longer the owner
    lost: bool = False

    def still_mine(self) -> bool:
        """True until the local deadline passes or a renewal finds the lease taken; once false,
        false for good."""
        if not self.lost and time.monotonic() >= self.deadline:
            self.lost = True
        return not self.lost

    def remaining_s(self) -> float:
        """Seconds left before the local deadline (0 once the lease is lost)."""
        return max(0.0, self.deadline - time.monotonic()) if self.still_mine() else 0.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class LeaseManager:
    """Acquires, renews and releases this instance's market leases. Use :meth:`open`."""

    def __init__(self, js: JetStreamContext, bucket: str, kv: KeyValue, instance_id: str,
                 ttl_s: float, margin_s: float) -> None:
        self._js, self._bucket, self._kv = js, bucket, kv
        self.instance_id = instance_id
        self.ttl_s = ttl_s
        self.margin_s = margin_s

    @classmethod
    async def open(cls, js: JetStreamContext, instance_id: str, ttl_s: float = 5.0, *,
                   margin_s: float | None = None, bucket: str = BUCKET,
                   replicas: int = 1) -> LeaseManager:
        """Bind to (or create) the lease bucket. The TTL is the bucket's (see ``open_bucket``);
        ``margin_s`` defaults to a fifth of it."""
        kv, ttl = await open_bucket(js, bucket, ttl_s, "AETHERION market leases", replicas)
        margin = ttl / 5 if margin_s is None else margin_s
        if not 0 < margin < ttl:
            raise ValueError(f"margin_s must be within (0, ttl = {ttl:g} s)")
        return cls(js, bucket, kv, instance_id, ttl, margin)

    @property
    def renew_every_s(self) -> float:
        """A renewal interval that leaves three tries before the local deadline."""
        return (self.ttl_s - self.margin_s) / 3

    def _record(self, tenure: str, acquired_ms: int) -> bytes:
        return msgspec.json.encode(_Record(self.instance_id, tenure, acquired_ms, _now_ms()))

    async def try_acquire(self, market: str) -> Lease | None:
        """Take ``market`` if nobody holds it; ``None`` if someone does (or did just now), or
        if NATS did not answer (a create that landed unanswered expires after the TTL)."""
        tenure, now = secrets.token_hex(8), _now_ms()
        sent = time.monotonic()
        try:
            rev = await self._kv.create(encode_token(market), self._record(tenure, now))
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return None
        except TRANSIENT as e:
            log.warning("lease acquisition failed", market=market, error=repr(e))
            return None
        log.info("lease acquired", market=market, token=rev)
        return Lease(market, self.instance_id, rev, rev, now, tenure,
                     sent + self.ttl_s - self.margin_s)

    async def renew(self, lease: Lease) -> bool:
        """Extend ``lease``; False if it was not extended.

        After a transient failure (timeout, reconnect) the lease stays valid until its deadline
        and the next call may succeed. A lease that lapsed or was taken is lost for good."""
        return await self._renew(lease, recover=True)

    async def _renew(self, lease: Lease, recover: bool) -> bool:
        if not lease.still_mine():
            return False
        sent = time.monotonic()
        try:
            rev = await self._kv.update(encode_token(lease.market),
                                        self._record(lease.tenure, lease.acquired_ms),
                                        last=lease.revision)
        except KeyWrongLastSequenceError:
            return recover and await self._recover(lease)
        except TRANSIENT as e:
            log.warning("lease renewal failed", market=lease.market, error=repr(e))
            return False
        lease.revision = rev  # kept even when too late, so that release() can delete the key
        if not lease.still_mine():  # the answer came after the deadline: stay stopped
            return False
        lease.deadline = sent + self.ttl_s - self.margin_s
        return True

    async def _recover(self, lease: Lease) -> bool:
        """The compare-and-set failed. If the key still holds this tenure (an earlier renewal
        whose answer was lost did land), adopt its revision and renew once more; else the lease
        is lost."""
        try:
            entry = await self._kv.get(encode_token(lease.market))
            rec: _Record | None = msgspec.json.decode(entry.value or b"", type=_Record)
        except (KeyNotFoundError, msgspec.DecodeError):
            rec = None
        except TRANSIENT:
            return False
        if rec is None or rec.owner != self.instance_id or rec.tenure != lease.tenure:
            lease.lost = True
            log.warning("lease lost", market=lease.market, token=lease.token)
            return False
        lease.revision = entry.revision or lease.revision
        return await self._renew(lease, recover=False)

    async def release(self, lease: Lease) -> bool:
        """Stop holding ``lease`` and delete its key if it is still this tenure's, so that
        another instance can take the market at once. True if the key was deleted."""
        lease.lost = True
        try:
            await self._kv.delete(encode_token(lease.market), last=lease.revision)
        except TRANSIENT as e:  # taken meanwhile, or NATS away: the key expires on its own
            if getattr(e, "err_code", None) != _WRONG_LAST_SEQUENCE:
                log.warning("lease release failed", market=lease.market, error=repr(e))
            return False
        log.info("lease released", market=lease.market, token=lease.token)
        return True

    async def _get(self, key: str) -> KeyValue.Entry | None:
        try:
            return await self._kv.get(key)
        except KeyNotFoundError:
            return None

    async def owners(self) -> dict[str, Owner]:
        """Every held market and its owner, read from the bucket."""
        keys = await bucket_keys(self._js, self._bucket)
        entries = await asyncio.gather(*(self._get(k) for k in keys))
        out: dict[str, Owner] = {}
        for key, entry in zip(keys, entries, strict=True):
            if entry is None:
                continue  # expired or released between the listing and the read
            try:
                rec = msgspec.json.decode(entry.value or b"", type=_Record)
                market = decode_token(key)
            except (msgspec.DecodeError, ValueError):
                log.warning("unreadable lease record", key=key)
                continue
            out[market] = Owner(rec.owner, rec.acquired_ms, rec.renewed_ms, entry.revision or 0)
        return out
