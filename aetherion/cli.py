"""The ``aetherion`` command: ``run``, ``db upgrade`` (and later ``replay``).

Logs go to stderr; stdout belongs to command output. A bad setting ends the command with one line
naming it, exit status 2, and no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import NoReturn

from pydantic import ValidationError

from aetherion import __version__
from aetherion.config import Settings, settings_error_line
from aetherion.logs import configure_logging

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aetherion", description="Real-time market intelligence backend."
    )
    p.add_argument("--version", action="version", version=f"aetherion {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the API and run the markets")
    run.add_argument("--host", help="interface to listen on (AETHERION_HOST)")
    run.add_argument("--port", type=int, help="port to listen on (AETHERION_PORT)")
    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply the SQL migrations (AETHERION_SQL_URL)")
    return p


def _settings(**overrides: object) -> Settings:
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as e:
        _fail(settings_error_line(e))


def _fail(line: str) -> NoReturn:
    print(f"aetherion: {line}", file=sys.stderr)
    raise SystemExit(2)


def _run(settings: Settings) -> int:
    import uvicorn

    from aetherion.api.app import create_app
    from aetherion.pipeline import preflight

    problems = preflight(settings)
    if problems:
        _fail("; ".join(problems))
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        lifespan="on", ws_ping_interval=20.0,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after a clean shutdown
        pass
    return 0 if server.started else 1


def _db_upgrade(settings: Settings) -> int:
    from aetherion.storage.migrate import upgrade

    asyncio.run(upgrade(settings.sql_url))
    print(f"database at {settings.sql_url.split('://', 1)[0]} is up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        settings = _settings(host=args.host, port=args.port)
    else:
        settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "run":
        return _run(settings)
    return _db_upgrade(settings)


if __name__ == "__main__":
    sys.exit(main())
