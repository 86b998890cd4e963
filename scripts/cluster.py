"""A cluster of AETHERION instances on loopback: ``make cluster`` (``python scripts/cluster.py``).

Starts ``--instances`` (3) ``aetherion run`` processes on ports 8101, 8102, … sharing one NATS
(``AETHERION_NATS_URL``, default ``nats://127.0.0.1:4222``) and one MariaDB/MySQL database
(``AETHERION_SQL_URL``, default ``mysql+asyncmy://root@127.0.0.1:3306/aetherion_cluster``,
created if missing), with the markets of ``AETHERION_MARKETS`` (default: six simulated ones).
Each instance keeps its log and ``var/`` under ``var/cluster/<id>/``. Ctrl-C stops them all
cleanly (each hands its markets over as it goes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

SIX = [
    {"id": i, "venue": v, "connector": "simulator", "symbol": s, "start_price": p}
    for i, v, s, p in (("btc", "crypto", "BTC/USDT", 60_000), ("eth", "crypto", "ETH/USDT", 3000),
                       ("spy", "us", "SPY", 450), ("qqq", "us", "QQQ", 380),
                       ("nifty", "nse", "NIFTY 50", 22_000), ("bank", "nse", "BANKNIFTY", 48_000))
]
SQL_URL = "mysql+asyncmy://root@127.0.0.1:3306/aetherion_cluster"


async def create_database(url: str) -> None:
    u = make_url(url)
    if not u.drivername.startswith(("mysql", "mariadb")) or not u.database:
        return
    engine = create_async_engine(u.set(database=""))
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{u.database}`"))
    finally:
        await engine.dispose()


def start(n: int, base_port: int, env: dict[str, str], home: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for k in range(1, n + 1):
        name = f"i{k}"
        folder = home / name
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "log").open("ab") as log:
            procs.append(subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "aetherion", "run", "--port", str(base_port + k)],
                env={**os.environ, **env, "AETHERION_INSTANCE_ID": name},
                stdout=log, stderr=subprocess.STDOUT, cwd=folder))
        print(f"{name}: http://127.0.0.1:{base_port + k}  (log: {folder / 'log'})")
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def cluster_env(sql_url: str | None = None) -> dict[str, str]:
    return {
        "AETHERION_NATS_URL": os.environ.get("AETHERION_NATS_URL", "nats://127.0.0.1:4222"),
        "AETHERION_SQL_URL": sql_url or os.environ.get("AETHERION_SQL_URL", SQL_URL),
        "AETHERION_MARKETS": os.environ.get("AETHERION_MARKETS", json.dumps(SIX)),
        "AETHERION_LOG_FORMAT": os.environ.get("AETHERION_LOG_FORMAT", "json"),
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--base-port", type=int, default=8100)
    args = ap.parse_args()
    env = cluster_env()
    asyncio.run(create_database(env["AETHERION_SQL_URL"]))
    signal.signal(signal.SIGTERM, _interrupt)  # `docker stop`, `timeout`: stop them all too
    procs = start(args.instances, args.base_port, env, Path("var/cluster"))
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("an instance exited; stopping the others", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
