"""Alembic environment. ``aetherion db upgrade`` (and the app at start) pass an open connection
in ``config.attributes["connection"]``; plain ``alembic -c migrations/alembic.ini`` builds one from
``AETHERION_SQL_URL``."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from aetherion.config import Settings
from aetherion.storage.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    engine = create_async_engine(Settings().sql_url)
    async with engine.begin() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


given = context.config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    asyncio.run(_online())
