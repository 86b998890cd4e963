"""Names on the bus and in the KV buckets, and message ids taken from natural keys.

Subject tokens and KV keys allow fewer characters than an id may hold: ``.`` splits a subject,
``*`` and ``>`` are wildcards, white space ends it, and KV keys take only ``-/_=.`` besides
letters and digits. :func:`encode_token` keeps ``A-Z a-z 0-9 _ -`` and writes every other
character as ``=XX`` per UTF-8 byte, so ``"btc.usdt"`` becomes ``"btc=2Eusdt"``. It is
reversible (:func:`decode_token`) and leaves the ids that ``MarketConfig`` accepts unchanged.

A message id (``Nats-Msg-Id``) is the natural key of the event it carries: the same event
published twice (a retry, a new owner re-publishing after a takeover) has the same id, and the
stream keeps one copy. Every id starts with the kind and the encoded market, so ids of different
kinds or markets never collide.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, Protocol

from aetherion.domain import Bar, BookSnapshot, Features, RegimeUpdate, Tick, Transition

__all__ = [
    "bar_msg_id", "book_msg_id", "decode_token", "decision_msg_id", "encode_token",
    "features_msg_id", "regime_msg_id", "tick_msg_id", "ticks_msg_id", "transition_msg_id",
]

_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ENCODED: Final = re.compile(r"(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+")


def encode_token(s: str) -> str:
    """``s`` as one subject token and KV key: reversible, ``ValueError`` for ``""``."""
    if not s:
        raise ValueError("an empty id cannot be a subject token")
    if all(c in _SAFE for c in s):
        return s
    return "".join(c if c in _SAFE else "".join(f"={b:02X}" for b in c.encode())
                   for c in s)


def decode_token(token: str) -> str:
    """The id that :func:`encode_token` turned into ``token``; ``ValueError`` if it did not."""
    if not _ENCODED.fullmatch(token):
        raise ValueError(f"not an encoded token: {token!r}")
    if "=" not in token:
        return token
    out, i = bytearray(), 0
    while i < len(token):
        if token[i] == "=":
            out.append(int(token[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    try:
        s = out.decode()
    except UnicodeDecodeError as e:
        raise ValueError(f"not an encoded token: {token!r}") from e
    if encode_token(s) != token:  # one spelling per id: "=61" is not "a"
        raise ValueError(f"not an encoded token: {token!r}")
    return s


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


def _tick_key(t: Tick) -> str:
    if t.trade_id:
        return f"id:{t.trade_id}"
    # No trade id: two trades at the same ms, price, size and side get one id (the second is
    # dropped from the bus, not from the stores, which key ticks their own way).
    return f"at:{t.ts}:{t.price!r}:{t.size!r}:{t.side}"


def tick_msg_id(t: Tick) -> str:
    """``tick:<market>:id:<trade id>``, or the time, price, size and side without a trade id."""
    return f"tick:{encode_token(t.market)}:{_tick_key(t)}"


def ticks_msg_id(ticks: Sequence[Tick]) -> str:
    """A batch of ticks of one market: its first tick and its length."""
    if not ticks:
        raise ValueError("an empty batch has no id")
    return f"ticks:{encode_token(ticks[0].market)}:{_tick_key(ticks[0])}:{len(ticks)}"


def bar_msg_id(b: Bar) -> str:
    """A closed bar by timeframe, open time and revision; an open one also by its trade count
    (each trade that joins it makes a new state)."""
    head = f"bar:{encode_token(b.market)}:{b.timeframe}:{b.open_time}"
    return f"{head}:{b.revision}" if b.closed else f"{head}:open:{b.trade_count}"


def features_msg_id(f: Features) -> str:
    return f"features:{encode_token(f.market)}:{f.timeframe}:{f.open_time}"


def regime_msg_id(u: RegimeUpdate) -> str:
    return f"regime:{encode_token(u.market)}:{u.timeframe}:{u.open_time}"


def transition_msg_id(t: Transition) -> str:
    return f"transition:{encode_token(t.market)}:{t.timeframe}:{t.open_time}"


def decision_msg_id(d: _HasId) -> str:
    """``decision:<decision id>``: the id is already the decision's unique key."""
    return f"decision:{d.id}"


def book_msg_id(b: BookSnapshot) -> str:
    """A book by its venue sequence number, or by its time when the venue has none."""
    key = b.sequence if b.sequence is not None else f"at:{b.ts}"
    return f"book:{encode_token(b.market)}:{key}"
