"""The connection to NATS, the errors of this package, and the KV buckets with a TTL.

Errors::

    ClusterError            the cluster cannot work as configured (stop, fix the setup)
     └── NatsUnavailable    no NATS server answered, or it runs without JetStream

Transient failures of a live connection (a timeout, a reconnect, a stream leader election) are
not translated. The lease writes report them as "not done" (``None``, ``False``) for the caller's
next round to retry; reads (owners, members) and publishes raise them (:data:`TRANSIENT`).
"""

from __future__ import annotations

import asyncio

import nats.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError, BucketNotFoundError
from nats.js.kv import KeyValue

__all__ = ["TRANSIENT", "ClusterError", "NatsUnavailable", "bucket_keys", "connect", "open_bucket"]

log = structlog.get_logger(__name__)

#: What a request on a live connection raises when it may work on the next attempt.
TRANSIENT = (nats.errors.Error, OSError, asyncio.TimeoutError)


class ClusterError(Exception):
    """The cluster cannot work as configured."""


class NatsUnavailable(ClusterError):
    """No NATS server with JetStream answered."""


async def _log_error(e: Exception) -> None:
    log.warning("nats error", error=repr(e))


async def connect(url: str, name: str, timeout_s: float = 5.0) -> Client:
    """Connect to ``url`` and check that JetStream is on.

    The first connection must succeed within ``timeout_s`` (:class:`NatsUnavailable` otherwise);
    once connected the client reconnects for ever, as a long-running instance should.
    """
    nc = Client()

    async def disconnected() -> None:
        if not nc.is_closed:  # not our own close()
            log.warning("nats disconnected, reconnecting", url=url)

    async def reconnected() -> None:
        log.info("nats reconnected", url=url)

    try:
        await asyncio.wait_for(nc.connect(
            url, name=name, connect_timeout=2, reconnect_time_wait=1,
            max_reconnect_attempts=-1, error_cb=_log_error,
            disconnected_cb=disconnected, reconnected_cb=reconnected), timeout_s)
    except (TimeoutError, *TRANSIENT) as e:
        await nc.close()
        raise NatsUnavailable(f"no NATS server answered at {url} within {timeout_s:g} s "
                              f"({e!r}); start one with `nats-server -js`") from e
    try:
        await nc.jetstream().account_info()
    except TRANSIENT as e:
        await nc.close()
        raise NatsUnavailable(f"NATS at {url} has no JetStream ({e!r}); "
                              "start the server with `-js`") from e
    return nc


async def open_bucket(js: JetStreamContext, bucket: str, ttl_s: float, description: str,
                      replicas: int = 1) -> tuple[KeyValue, float]:
    """Bind to the KV ``bucket``, creating it with a TTL of ``ttl_s`` if absent.

    Returns the bucket and its actual TTL in seconds. The TTL belongs to the bucket, so every
    instance uses the one the bucket was created with; a different ``ttl_s`` is logged and
    ignored. A bucket without a TTL is refused: its keys would never expire.
    """
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        cfg = KeyValueConfig(bucket=bucket, description=description, history=1, ttl=ttl_s,
                             storage=StorageType.FILE, replicas=replicas)
        try:
            kv = await js.create_key_value(cfg)
        except APIError:  # created meanwhile by another instance, otherwise
            kv = await js.key_value(bucket)
    ttl = (await kv.status()).ttl
    if not ttl:
        raise ClusterError(f"KV bucket {bucket!r} has no TTL, so its keys never expire; "
                           "delete it and let the instances create it again")
    if abs(ttl - ttl_s) > 1e-3:
        log.warning("kv bucket ttl differs from the configured one; using the bucket's",
                    bucket=bucket, bucket_ttl_s=ttl, configured_ttl_s=ttl_s)
    return kv, ttl


async def bucket_keys(js: JetStreamContext, bucket: str) -> list[str]:
    """The keys in KV ``bucket``, from its stream's per-subject counts in one request.

    A deleted key still has its delete marker, so it is listed; reading it finds no key.
    Not ``KeyValue.keys()``: its watcher can end the initial replay early and return too few
    keys, or none (nats.py issue 842), which made a fresh lease or heartbeat look absent.
    """
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    return [s.removeprefix(prefix) for s in info.state.subjects or {}]
