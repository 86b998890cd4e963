"""The one way a connector remembers its position across restarts: a key in ``system_state``.

The connector says what its position is (``position()``: a small JSON-able dict, ``None``
while it has none) and how to take one back (what :meth:`Checkpointer.load` returns). The
checkpointer writes the position under its key with ``saved_ms``:

- as it moves, at most once every ``every_s``;
- at once when forced: after a lost connection, and when the owner asks (the server does, once
  the queue is drained);
- never twice the same (an unchanged position is not written again, nor the one just loaded).

A store that is down never stops ingest: a failed read starts without a position, a failed
write is logged and tried again at the next save. Reads and writes go through the
:class:`~aetherion.ingest.base.Checkpoints` port, never a store module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from aetherion.ingest.base import Checkpoints

__all__ = ["Checkpointer", "Position"]

log = structlog.get_logger(__name__)

Position = dict[str, Any]


class Checkpointer:
    """Loads and saves one connector's position (``store`` ``None``: keeps none)."""

    def __init__(self, store: Checkpoints | None, key: str, every_s: float,
                 position: Callable[[], Position | None]) -> None:
        self.store, self.key, self.every_s = store, key, every_s
        self._position = position
        self._saved: Position | None = None
        self._saved_at = 0.0

    async def load(self) -> Position:
        """The stored position (empty when there is none or the store cannot be read)."""
        if self.store is None:
            return {}
        try:
            state = await self.store.get_state(self.key) or {}
        except Exception as e:  # a store that is down must not stop ingest
            log.warning("checkpoint not readable", key=self.key, error=str(e))
            return {}
        self._saved = {k: v for k, v in state.items() if k != "saved_ms"}
        return state

    async def save(self, *, force: bool = False) -> None:
        if self.store is None:
            return
        now = time.monotonic()
        if not force and now - self._saved_at < self.every_s:
            return
        position = self._position()
        if position is None or position == self._saved:
            return
        self._saved_at = now
        try:
            await self.store.set_state(self.key, {**position,
                                                  "saved_ms": time.time_ns() // 1_000_000})
            self._saved = position
        except Exception as e:  # tried again at the next save
            log.warning("checkpoint not saved", key=self.key, error=str(e))
