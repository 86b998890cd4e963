"""Alembic environment. ``aetherion db upgrade`` (and the app at start) pass an open connection
in ``config.attributes["connection"]``; plain ``alembic -c migrations/alembic.ini`` builds one from
``-x url=…`` or else ``AETHERION_SQL_URL`` (async URLs: ``sqlite+aiosqlite``, ``mysql+asyncmy``)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from aetherion.config import Settings
from aetherion.storage.migrate import ensure_sqlite_dir
from aetherion.storage.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    url = context.get_x_argument(as_dictionary=True).get("url") or Settings().sql_url
    ensure_sqlite_dir(url)
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


given = context.config.attributes.get("connection")
if given is not None:
    _run(given)
else:
    asyncio.run(_online())
