"""Apply the Alembic migrations in ``migrations/`` to a database (``aetherion db upgrade``)."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import aetherion

__all__ = ["migrations_dir", "upgrade", "upgrade_engine"]


def migrations_dir() -> Path:
    """``AETHERION_MIGRATIONS_DIR``, else ``migrations/`` beside the package (a source tree)."""
    given = os.environ.get("AETHERION_MIGRATIONS_DIR")
    path = Path(given) if given else Path(aetherion.__file__).resolve().parent.parent / "migrations"
    if not (path / "env.py").is_file():
        raise FileNotFoundError(f"no Alembic migrations at {path}; set AETHERION_MIGRATIONS_DIR")
    return path


def ensure_sqlite_dir(url: str) -> None:
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)


def _upgrade(conn: Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


MIGRATION_LOCK_S = 120  # how long an instance waits for another's migration (MySQL)


async def upgrade_engine(engine: AsyncEngine) -> None:
    """Migrate; on MySQL/MariaDB under a named lock, so that instances of a cluster starting at
    once against a new database do not race to create the same tables."""
    async with engine.begin() as conn:
        if engine.dialect.name != "mysql":
            await conn.run_sync(_upgrade)
            return
        got = (await conn.execute(text("SELECT GET_LOCK('aetherion_migrate', :s)"),
                                  {"s": MIGRATION_LOCK_S})).scalar()
        if got != 1:
            raise TimeoutError(f"another instance held the migration lock for "
                               f"{MIGRATION_LOCK_S} s")
        try:
            await conn.run_sync(_upgrade)
        finally:
            await conn.execute(text("SELECT RELEASE_LOCK('aetherion_migrate')"))


async def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (a no-op when it is there)."""
    ensure_sqlite_dir(url)
    engine = create_async_engine(url)
    try:
        await upgrade_engine(engine)
    finally:
        await engine.dispose()
