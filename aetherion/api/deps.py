"""What a handler may read, as ``Annotated`` dependencies: a read-only view of the live
markets, the stores, and the streams. Handlers never reach into connectors or stages."""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException
from starlette.requests import HTTPConnection

from aetherion.api.publish import Streams
from aetherion.config import Settings
from aetherion.pipeline import MarketView
from aetherion.storage.stores import Stores

__all__ = ["LiveDep", "LiveView", "StoresDep", "StreamsDep"]


class LiveView(Protocol):
    """The runtime as the API sees it."""

    @property
    def settings(self) -> Settings: ...

    @property
    def started_ms(self) -> int: ...  # when this run started its markets, epoch ms

    def view(self, market_id: str) -> MarketView: ...

    def store_status(self) -> dict[str, object]: ...

    def ownership(self) -> dict[str, dict[str, Any]]: ...

    def cluster_status(self) -> dict[str, Any]: ...


async def live(conn: HTTPConnection) -> LiveView:
    rt: LiveView = conn.app.state.runtime
    return rt


async def stores(conn: HTTPConnection) -> Stores:
    s: Stores | None = conn.app.state.runtime.stores
    if s is None:
        raise HTTPException(503, "starting: stores not open yet", headers={"Retry-After": "1"})
    return s


async def streams(conn: HTTPConnection) -> Streams:
    st: Streams = conn.app.state.streams
    return st


# The dependencies are coroutines: FastAPI runs a plain function dependency in a worker thread,
# and the hand-off cost more than the lookups (under load, a third of a history request).
LiveDep = Annotated[LiveView, Depends(live)]
StoresDep = Annotated[Stores, Depends(stores)]
StreamsDep = Annotated[Streams, Depends(streams)]
