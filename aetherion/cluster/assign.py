"""Which live instance should own which market: rendezvous (highest random weight) hashing.

Every instance scores every market with a stable hash of ``(instance, market)`` (blake2b: the
same on every machine and run, unlike Python's ``hash``) and the highest score wins. All instances
that see the same members compute the same owners without talking to each other; when an
instance leaves, only its markets move (each to its next-highest scorer), and when one joins it
takes about ``1/n`` of the markets, each from a single previous owner.

The hash only says who *should* own a market; the lease says who *does*. :func:`plan` turns the
difference into actions for one instance: take the free markets that hash to it, hand back the
ones it holds that now hash to another live instance (which then takes them). A market held by
an instance that is no longer a member is left alone until its lease expires.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Plan", "assign", "owner_of", "plan", "weight"]


def weight(instance: str, market: str) -> int:
    """The score of ``instance`` for ``market``: 64 bits of blake2b of both."""
    digest = hashlib.blake2b(f"{instance}\x00{market}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(market: str, instances: Iterable[str]) -> str | None:
    """The instance that should own ``market`` (``None`` without instances); ties, which need a
    64-bit collision, go to the larger id."""
    return max(instances, key=lambda i: (weight(i, market), i), default=None)


def assign(markets: Iterable[str], instances: Iterable[str]) -> dict[str, str]:
    """Each market's intended owner; empty without instances."""
    members = set(instances)
    if not members:
        return {}
    return {m: max(members, key=lambda i: (weight(i, m), i)) for m in markets}


@dataclass(frozen=True, slots=True)
class Plan:
    """What one instance should do now, in market order."""

    acquire: tuple[str, ...]  # free markets that hash to this instance
    release: tuple[str, ...]  # markets it holds that hash to another live instance


def plan(markets: Iterable[str], instances: Iterable[str], me: str,
         owners: Mapping[str, str]) -> Plan:
    """The moves for instance ``me``, given the live ``instances`` (``me`` counts as live even
    if its own heartbeat is missing from them) and the current lease ``owners`` (market →
    instance)."""
    intended = assign(markets, {*instances, me})
    acquire = [m for m, o in intended.items() if o == me and m not in owners]
    release = [m for m, o in intended.items() if o != me and owners.get(m) == me]
    return Plan(tuple(sorted(acquire)), tuple(sorted(release)))
