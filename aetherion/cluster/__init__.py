"""Cluster mode on NATS JetStream: many instances, one owner per market (issue 16).

The parts, each usable and tested alone (none imports the API or the pipeline):

- :mod:`~.lease` — who owns a market: a lease per market in the KV bucket ``aeth_leases``,
  created only if absent, renewed by compare-and-set, expired by the bucket's TTL. The owner's
  local deadline passes before the server lets anyone else take over, and the acquisition
  revision is a fencing token for the stores.
- :mod:`~.assign` — who *should* own a market: rendezvous hashing over the live instances, and
  the acquire/release plan of one instance.
- :mod:`~.members` — who is alive: heartbeats in the KV bucket ``aeth_instances``.
- :mod:`~.bus` — the events: the stream ``AETH`` on ``aeth.<market>.<kind>``, published once
  by natural key (``Nats-Msg-Id``), fanned out by core subscriptions.
- :mod:`~.keys` — subject tokens for any id, and the message ids of every event type.

An instance's round, every ``heartbeat_s``: renew its leases (stop the markets whose lease is no
longer :meth:`~.lease.Lease.still_mine`), heartbeat, read members and owners, and apply
:func:`~.assign.plan` (release what hashes elsewhere, try to acquire what hashes here).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from aetherion.cluster._nats import ClusterError, NatsUnavailable, connect
from aetherion.cluster.assign import Plan, assign, owner_of, plan
from aetherion.cluster.bus import HUB_OF_KIND, Bus, BusEvent, BusSubscription
from aetherion.cluster.lease import Lease, LeaseManager, Owner
from aetherion.cluster.members import Member, Membership

__all__ = [
    "HUB_OF_KIND", "Bus", "BusEvent", "BusSubscription", "ClusterError", "ClusterSettings",
    "Lease", "LeaseManager", "Member", "Membership", "NatsUnavailable", "Owner", "Plan",
    "assign", "connect", "default_instance_id", "owner_of", "plan",
]


def default_instance_id() -> str:
    """``<host name>-<pid>``: unique on a machine, readable in status pages."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """How this instance joins the cluster. ``lease_ttl_s`` is also the heartbeat TTL: an
    instance silent that long is gone and its markets are free. ``heartbeat_s`` paces the round
    (renewals included), at most a third of the TTL so that a lease gets several tries before
    its deadline. ``replicas`` is the replication of the buckets and the stream (3 on a NATS
    cluster)."""

    nats_url: str
    instance_id: str = field(default_factory=default_instance_id)
    lease_ttl_s: float = 5.0
    heartbeat_s: float = 1.0
    replicas: int = 1
    api_url: str | None = None  # where this instance's REST API answers, for GET /api/cluster

    def __post_init__(self) -> None:
        if not self.nats_url:
            raise ValueError("nats_url is empty")
        if not 0 < len(self.instance_id) <= 64:
            raise ValueError("instance_id must be 1-64 characters")
        if self.lease_ttl_s < 1:
            raise ValueError("lease_ttl_s must be >= 1 s")
        if not 0 < self.heartbeat_s <= self.lease_ttl_s / 3:
            raise ValueError("heartbeat_s must be > 0 and at most a third of lease_ttl_s")
        if not 1 <= self.replicas <= 5:
            raise ValueError("replicas must be 1 to 5 (JetStream's limit)")
