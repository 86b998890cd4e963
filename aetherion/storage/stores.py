"""Both stores and their buffered writers, opened and closed together.

The writers journal to ``var/spool/<hash>``: one folder per pair of store targets, so a run
against other stores never writes rows meant for these.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy.engine import make_url

from aetherion.config import Settings
from aetherion.storage.market import MarketStore, open_market_store
from aetherion.storage.state import StateStore
from aetherion.storage.writer import BufferedWriter

__all__ = ["Stores", "open_stores", "spool_dir"]

log = structlog.get_logger(__name__)


def spool_dir(settings: Settings) -> Path:
    mongo = re.sub(r"//[^@/]*@", "//", settings.mongo_url or "")  # no credentials in the hash
    target = f"{make_url(settings.sql_url).render_as_string()}|{mongo}|{settings.mongo_db}"
    return Path("var/spool") / hashlib.sha256(target.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Stores:
    state: StateStore
    market: MarketStore
    market_writer: BufferedWriter
    state_writer: BufferedWriter

    @property
    def writers(self) -> tuple[BufferedWriter, BufferedWriter]:
        return self.market_writer, self.state_writer

    def status(self) -> dict[str, object]:
        return {w.name: {"backlog": w.backlog, "errors": w.errors, "spilled": w.spilled}
                for w in self.writers}

    async def close(self, grace_s: float) -> None:
        """Write what waits for up to ``grace_s`` (the rest is journaled), then close."""
        await asyncio.gather(*(w.close(grace_s) for w in self.writers))
        await self.market.close()
        await self.state.close()


async def open_stores(settings: Settings, journal_wait_s: float = 0.0) -> Stores:
    """Open both stores (migrating the SQL schema) and start their writers. What an earlier
    run journaled is written back first, waiting up to ``journal_wait_s``; a store that is
    down is not waited for."""
    state = await StateStore.open(settings.sql_url)
    market = await open_market_store(settings, state.engine)
    spool = spool_dir(settings)
    stores = Stores(state, market, BufferedWriter.for_market(market, settings, spool),
                    BufferedWriter.for_state(state, settings, spool))
    for w in stores.writers:
        w.start()
    for w in stores.writers:
        if not await w.journal_written(journal_wait_s):
            log.warning(
                "starting before the journal is written back", store=w.name, backlog=w.backlog)
    return stores
