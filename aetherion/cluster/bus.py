"""Events of owned markets on per-market subjects: a JetStream stream to publish into, core NATS
subscriptions to fan them out.

Subjects are ``aeth.<market>.<kind>`` (the market encoded by :func:`~.keys.encode_token`, kinds
as the WebSocket ``type``: ``tick``, ``ticks``, ``bar``, ``features``, ``book``, ``regime``,
``transition``, ``decision``). The payload is the JSON text a WebSocket client gets
(``api.hub.encode``), so a subscriber hands it to its local hub unchanged; :data:`HUB_OF_KIND`
says which hub.

The stream ``AETH`` captures ``aeth.>`` with limits-based retention (an hour, a GiB by default)
and a duplicate window of two minutes: :meth:`Bus.publish` sets ``Nats-Msg-Id`` to the event's
natural key (:mod:`~.keys`), and the server stores one copy of an event however often it is
published in that window (:attr:`PubAck.duplicate` says so).

Live fan-out uses core subscriptions, not JetStream consumers: a dashboard wants the newest
events at the lowest latency, a client that connects gets its snapshot from the stores first, and
a consumer per instance and filter would be server-side state to create, track and delete as
WebSocket clients come and go. A core subscriber does get every published copy, duplicates
included, so :class:`BusSubscription` drops a message id it has seen among its last
``dedupe_window`` ones. NATS keeps the order of one publisher's messages to one subscription, and
one market has one publisher (its owner), so each subscription sees each market in order. What a
core subscriber misses while disconnected is not replayed; the stream keeps it for a reader that
needs it (a durable consumer, e.g. for a new owner's catch-up).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from aetherion.cluster._nats import ClusterError
from aetherion.cluster.keys import decode_token, encode_token

__all__ = ["HUB_OF_KIND", "PREFIX", "STREAM", "Bus", "BusEvent", "BusSubscription"]

log = structlog.get_logger(__name__)

STREAM = "AETH"
PREFIX = "aeth"
MSG_ID = "Nats-Msg-Id"
#: The WebSocket hub (``/ws/<hub>``) that serves each kind of event.
HUB_OF_KIND: Final[dict[str, str]] = {
    "tick": "market", "ticks": "market", "bar": "market", "features": "market",
    "book": "market", "regime": "regime", "transition": "regime", "decision": "decision",
}
_KIND = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True, slots=True)
class BusEvent:
    """One event as a subscriber receives it."""

    market: str
    kind: str
    payload: bytes  # the WebSocket message, JSON text
    msg_id: str | None

    @property
    def text(self) -> str:
        return self.payload.decode()


Callback = Callable[[BusEvent], None]


def _check_kind(kind: str) -> str:
    if not _KIND.fullmatch(kind):
        raise ValueError(f"a kind is lower-case letters, digits and '_', not {kind!r}")
    return kind


class Bus:
    """Publishes to and subscribes on the event stream. Use :meth:`open`."""

    def __init__(self, nc: Client, js: JetStreamContext, stream: str, prefix: str) -> None:
        self._nc, self._js = nc, js
        self.stream, self.prefix = stream, prefix

    @classmethod
    async def open(cls, nc: Client, *, stream: str = STREAM, prefix: str = PREFIX,
                   max_age_s: float = 3600.0, max_bytes: int = 1 << 30,
                   duplicate_window_s: float = 120.0, replicas: int = 1) -> Bus:
        """Bind to ``stream``, creating it if absent. An existing stream keeps its limits (an
        operator may have tuned them) but must capture ``<prefix>.>``."""
        if not _KIND.fullmatch(prefix):
            raise ValueError(f"the prefix must be one plain subject token, not {prefix!r}")
        js = nc.jetstream()
        subjects = f"{prefix}.>"
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            info = await js.add_stream(StreamConfig(
                name=stream, description="AETHERION market events", subjects=[subjects],
                retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD,
                max_age=max_age_s, max_bytes=max_bytes, duplicate_window=duplicate_window_s,
                storage=StorageType.FILE, num_replicas=replicas))
        if subjects not in (info.config.subjects or []):
            raise ClusterError(f"stream {stream!r} exists but does not capture {subjects!r}")
        return cls(nc, js, stream, prefix)

    def subject(self, market: str, kind: str) -> str:
        return f"{self.prefix}.{encode_token(market)}.{_check_kind(kind)}"

    def parse(self, subject: str) -> tuple[str, str]:
        """``(market, kind)`` of one of this bus's subjects; ``ValueError`` for others."""
        parts = subject.split(".")
        if len(parts) != 3 or parts[0] != self.prefix:
            raise ValueError(f"not a subject of this bus: {subject!r}")
        return decode_token(parts[1]), _check_kind(parts[2])

    async def publish(self, market: str, kind: str, payload: bytes, msg_id: str) -> PubAck:
        """Store one event in the stream and wait for the server's acknowledgement; a
        ``msg_id`` already seen within the duplicate window is not stored again
        (``duplicate`` is then true)."""
        if not msg_id:
            raise ValueError("every event needs its msg_id")
        return await self._js.publish(self.subject(market, kind), payload,
                                      headers={MSG_ID: msg_id}, stream=self.stream)

    async def subscribe(self, markets: Iterable[str] | None, kinds: Iterable[str] | None,
                        callback: Callback, *, dedupe_window: int = 10_000) -> BusSubscription:
        """Call ``callback`` for each event of ``markets`` (``None``: all) whose kind is in
        ``kinds`` (``None``: all). The callback runs on the event loop and must not block; one
        subscription delivers each market's events in publish order, whatever their kinds."""
        wanted = None if kinds is None else frozenset(_check_kind(k) for k in kinds)
        # One server subscription per market filter, never per kind: separate subscriptions
        # are separate queues, which would reorder a market's bar and features.
        kind_token = next(iter(wanted)) if wanted is not None and len(wanted) == 1 else "*"
        tokens = ["*"] if markets is None else sorted({encode_token(m) for m in markets})
        sub = BusSubscription(self, callback, wanted, dedupe_window)
        for t in tokens:
            sub.subscriptions.append(
                await self._nc.subscribe(f"{self.prefix}.{t}.{kind_token}", cb=sub._on_msg))
        return sub


class BusSubscription:
    """The server subscriptions behind one :meth:`Bus.subscribe` call, with counters."""

    def __init__(self, bus: Bus, callback: Callback, kinds: frozenset[str] | None,
                 dedupe_window: int) -> None:
        self._bus, self._callback, self._kinds = bus, callback, kinds
        self._window = dedupe_window
        self._recent: dict[str, None] = {}  # message ids seen, oldest first
        self.subscriptions: list[Subscription] = []
        self.received = 0  # handed to the callback
        self.duplicates = 0  # dropped: id seen among the last dedupe_window
        self.errors = 0  # dropped: malformed subject, or the callback raised

    def _seen(self, msg_id: str) -> bool:
        if msg_id in self._recent:
            return True
        self._recent[msg_id] = None
        if len(self._recent) > self._window:
            del self._recent[next(iter(self._recent))]
        return False

    async def _on_msg(self, msg: Msg) -> None:
        try:
            market, kind = self._bus.parse(msg.subject)
        except ValueError:
            self.errors += 1
            log.warning("message on an unexpected subject", subject=msg.subject)
            return
        if self._kinds is not None and kind not in self._kinds:
            return
        msg_id = (msg.headers or {}).get(MSG_ID)
        if msg_id is not None and self._seen(msg_id):
            self.duplicates += 1
            return
        try:
            self._callback(BusEvent(market, kind, msg.data, msg_id))
        except Exception:  # a subscriber's bug must not end the subscription
            self.errors += 1
            log.exception("bus callback failed", market=market, kind=kind)
            return
        self.received += 1

    async def unsubscribe(self) -> None:
        for s in self.subscriptions:
            await s.unsubscribe()
        self.subscriptions.clear()
