"""The ``aetherion`` command: ``run``, ``db upgrade`` (and later ``replay``).

Logs go to stderr; stdout belongs to command output. A bad setting ends the command with one line
naming it, exit status 2, and no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

from aetherion import __version__
from aetherion.config import Settings, settings_error_line
from aetherion.decision.config import DecisionConfig
from aetherion.domain import TIMEFRAME_MS
from aetherion.logs import configure_logging
from aetherion.regime.config import RegimeConfig
from aetherion.report import DEFAULT_FEE_BPS, DEFAULT_SLIPPAGE_BPS

if TYPE_CHECKING:
    from aetherion.recorded import Loaded

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
    rp = sub.add_parser(
        "replay", help="run the pipeline over recorded trades or candles",
        description="One CSV row per closed bar (to --out, else stdout), then a JSON summary as "
                    "the last line of stdout.")
    rp.add_argument("input", type=Path, nargs="?",
                    help="CSV or Parquet, optionally .gz or .zip (not with --from-store)")
    rp.add_argument("--from-store", action="store_true",
                    help="replay what a live run of --market stored (ticks, models, warm-up)")
    rp.add_argument("--since", help="--from-store: the run starting at/after (epoch ms or ISO)")
    rp.add_argument("--until", help="--from-store: stop at (epoch ms or ISO)")
    rp.add_argument("--kind", choices=("trades", "candles"), help="guessed from the columns")
    rp.add_argument("--column", metavar="TICKER",
                    help="a wide file of closes (Date + one column per ticker): replay this "
                         "ticker's closes as candles")
    rp.add_argument("--market", default="replay", help="a name for the output")
    rp.add_argument("--timeframe", choices=list(TIMEFRAME_MS),
                    help="bars to write and decide on (candles: their spacing)")
    rp.add_argument("--out", type=Path, help="FILE.csv or FILE.parquet")
    rp.add_argument("--store", action="store_true",
                    help="also write bars, features, regimes and models to the stores")
    rp.add_argument("--fee-bps", type=float, default=DEFAULT_FEE_BPS,
                    help="fee per unit traded, basis points (default %(default)s)")
    rp.add_argument("--slippage-bps", type=float, default=DEFAULT_SLIPPAGE_BPS,
                    help="slippage per unit traded, basis points (default %(default)s)")
    rp.add_argument("--plot", type=Path, metavar="FILE.png",
                    help="draw price by regime, decisions, position and confidence")
    for section, cfg in (("regime", RegimeConfig), ("decision", DecisionConfig)):
        for name, field in cfg.model_fields.items():
            flat = f"{section}_{name}"
            rp.add_argument("--" + flat.replace("_", "-"), dest=f"{section}.{name}", metavar="V",
                            help=field.description or f"as AETHERION_{flat.upper()}")
    from aetherion.simulate import add_parser as add_simulate

    add_simulate(sub)
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


async def _stores_unreachable(settings: Settings, timeout_s: float = 10.0) -> str | None:
    """One line naming the store that does not answer at start (URLs without passwords)."""
    from pymongo import AsyncMongoClient
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    url = make_url(settings.sql_url)
    if url.get_backend_name() != "sqlite":
        engine = create_async_engine(url)
        try:
            async with asyncio.timeout(timeout_s), engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as e:  # whatever the driver raises, said in one line
            shown = str(e).splitlines()[0][:200] or type(e).__name__
            return f"cannot reach the SQL store {url.render_as_string()}: {shown}"
        finally:
            await engine.dispose()
    if settings.mongo_url:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            settings.mongo_url, serverSelectionTimeoutMS=int(timeout_s * 1000))
        try:
            await client.admin.command("ping")
        except Exception as e:
            where = ", ".join(f"{h}:{p}" for h, p in client.topology_description
                              .server_descriptions())
            return f"cannot reach MongoDB at {where}: {type(e).__name__}"
        finally:
            await client.close()
    return None


def _run(settings: Settings) -> int:
    import uvicorn

    from aetherion.api.app import create_app
    from aetherion.pipeline import preflight

    problems = preflight(settings)
    if problems:
        _fail("; ".join(problems))
    unreachable = asyncio.run(_stores_unreachable(settings))
    if unreachable:
        _fail(unreachable)
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        lifespan="on", ws_ping_interval=20.0, ws_max_size=settings.ws_max_message_bytes,
        # An idle keep-alive connection is closed after this long. uvicorn's 5 s raced clients
        # under load: a big answer still on its way out started the clock, and the client's
        # next request met the close (a read error). Longer than the usual proxies' 60 s.
        timeout_keep_alive=65,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after a clean shutdown
        pass
    return 0 if server.started else 1


def _log_skipped(path: Path, loaded: Loaded) -> None:
    import structlog

    for rows, what in ((loaded.dropped, "rows without a usable close dropped"),
                       (loaded.no_range, "rows without a usable open, high or low read as "
                        "closes only")):
        if rows:
            structlog.get_logger(__name__).warning(what, file=str(path), rows=rows)


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from aetherion.replay import InputError, load, replay, summary_line, write_rows
    from aetherion.report import classification, performance, plot

    if not args.from_store and args.input is None:
        _fail("replay: give an INPUT file, or --from-store --market ID")
    _check_writable("--out", args.out)
    _check_writable("--plot", args.plot)
    try:
        if args.from_store:
            result = _from_store(args, settings)
        else:
            loaded = load(args.input, args.kind, args.column, settings.replay_max_bytes)
            _log_skipped(args.input, loaded)
            result = replay(loaded, settings, args.market, args.timeframe,
                            progress=sys.stderr.isatty())
    except InputError as e:
        _fail(str(e))
    try:
        write_rows(result.rows, args.out or Path("/dev/stdout"))
    except OSError as e:
        _fail(f"--out {args.out}: cannot write ({e.strerror or e})")
    if args.store:
        from aetherion.pipeline.replay import store_result

        asyncio.run(store_result(result, settings))
    result.summary["performance"] = performance(result.rows, args.fee_bps, args.slippage_bps)
    scored = classification(result.rows)  # None unless the input carried true_regime
    if scored is not None:
        result.summary["classification"] = scored
    if args.plot:
        try:
            plot(result.rows, args.plot, f"{args.market}: {result.summary['timeframe']} bars")
        except (OSError, ValueError) as e:  # a full disk, a format matplotlib does not write
            _fail(f"--plot {args.plot}: cannot draw ({str(e).splitlines()[0][:80]})")
    print(summary_line(result.summary), flush=True)
    return 0


def _check_writable(flag: str, path: Path | None) -> None:
    """``--out``/``--plot``: a file that can be written, checked before any work."""
    if path is None:
        return
    folder = path.parent
    if path.is_dir():
        _fail(f"{flag} {path}: is a folder, not a file")
    if not folder.is_dir():
        _fail(f"{flag} {path}: {folder} is not an existing folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists()
                                                    and not os.access(path, os.W_OK)):
        _fail(f"{flag} {path}: not writable")


def _from_store(args: argparse.Namespace, settings: Settings) -> Any:
    from aetherion.domain import parse_time
    from aetherion.replay import InputError
    from aetherion.replay_store import replay_from_store

    try:
        since, until = parse_time("since", args.since), parse_time("until", args.until)
    except ValueError as e:
        raise InputError(str(e)) from None
    return asyncio.run(replay_from_store(settings, args.market, since, until))


def _db_upgrade(settings: Settings) -> int:
    from aetherion.storage.migrate import upgrade

    asyncio.run(upgrade(settings.sql_url))
    print(f"database at {settings.sql_url.split('://', 1)[0]} is up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        settings = _settings(host=args.host, port=args.port)
    elif args.command == "replay":
        stages: dict[str, dict[str, Any]] = {"regime": {}, "decision": {}}
        for key, value in vars(args).items():
            section, dot, name = key.partition(".")
            if dot and value is not None:
                stages[section][name] = value
        settings = _settings(**{k: v for k, v in stages.items() if v})
    else:
        settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "run":
        return _run(settings)
    if args.command == "replay":
        return _replay(args, settings)
    if args.command == "simulate":
        from aetherion.simulate import SimulateError, run

        try:
            return run(args, settings)
        except SimulateError as e:
            _fail(str(e))
    return _db_upgrade(settings)


if __name__ == "__main__":
    sys.exit(main())
