"""The simulated market: its regimes, its live stream, and a history with the live statistics."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from numpy.typing import NDArray

from aetherion.config import MarketConfig, Settings
from aetherion.domain import REGIMES, Tick
from aetherion.features.candles import CandleEngine
from aetherion.ingest.base import Outbox
from aetherion.ingest.simulator import (
    MAX_STEP_MS,
    REGIME_PARAMS,
    TRANSITIONS,
    SimBars,
    SimulatedMarket,
    SimulatorConfig,
    SimulatorConnector,
)

HOUR = 3_600_000


def market(seed: int = 7, rate: float = 5.0, regime_seconds: float = 1800.0) -> SimulatedMarket:
    return SimulatedMarket("btcusdt", "crypto", 60_000.0, seed, regime_seconds, rate)


def stream(m: SimulatedMarket, hours: float, rate: float,
           step_ms: int = 60_000) -> tuple[list[Tick], list[str]]:
    ticks: list[Tick] = []
    regimes: list[str] = []
    for t in range(0, int(hours * HOUR), step_ms):
        k, r = m.labelled_trades(t, t + step_ms, rate)
        ticks += k
        regimes += r
    return ticks, regimes


def runs(labels: NDArray[np.int8]) -> tuple[NDArray[np.intp], NDArray[np.int8]]:
    """Lengths and labels of the runs of equal labels."""
    cut = np.flatnonzero(np.concatenate(([True], labels[1:] != labels[:-1], [True])))
    return np.diff(cut), labels[cut[:-1]]


def log_returns(b: SimBars) -> NDArray[np.float64]:
    return np.diff(np.log(b.close))


# ---- the regime process ---------------------------------------------------------------------

def test_a_seed_reproduces_the_stream_and_the_history() -> None:
    def run(seed: int) -> tuple[list[tuple[int, float, float, int, str | None]], list[str],
                                SimBars]:
        m = market(seed)
        ticks, regimes = stream(m, 0.25, 50.0, step_ms=50)
        rows = [(t.ts, t.price, t.size, t.side, t.trade_id) for t in ticks]
        return rows, regimes, m.history_bars("1m", 300, 1_700_000_000_000)

    a, b, c = run(3), run(3), run(4)
    assert a[0] == b[0] and a[1] == b[1] and a[0] != c[0]
    for f in SimBars.__slots__:
        assert np.array_equal(getattr(a[2], f), getattr(b[2], f))
    assert not np.array_equal(a[2].close, c[2].close)
    # labelled_trades is trades() with labels: the same stream
    plain = [(t.ts, t.price) for t in stream(market(3), 0.25, 50.0, step_ms=50)[0]]
    assert plain == [(r[0], r[1]) for r in a[0]]


def test_every_regime_appears_with_stays_of_minutes_to_hours() -> None:
    assert tuple(r.name for r in REGIME_PARAMS) == REGIMES
    bars = market(11).candles("1m", 200_000, 0)
    lengths, labels = runs(bars.regime)
    for i, r in enumerate(REGIME_PARAMS):
        stays = lengths[labels == i]
        mean = 30.0 * r.stay  # minutes (regime_seconds 1800)
        assert len(stays) > 300, r.name
        assert abs(stays.mean() / mean - 1) < 0.15, (r.name, stays.mean())
        assert stays.std() / stays.mean() > 0.9, r.name  # a wide spread, not a fixed length
        p5, p95 = np.percentile(stays, [5, 95])
        assert p5 < 0.35 * mean and p95 > 2.5 * mean, (r.name, p5, p95)
    share = np.bincount(bars.regime, minlength=4) / len(bars)
    assert 0.02 < share[3] < 0.1 and share[3] < min(share[:3])  # crisis is the rarest
    assert TRANSITIONS[3][0] < TRANSITIONS[3][1]  # crisis mostly gives way to bear or sideways
    assert all(TRANSITIONS[i][i] == 0 for i in range(4))


def test_the_live_stream_switches_regimes_like_the_bar_generator() -> None:
    # one trade every 5 s over 400 hours: the regime of each trade, in time
    ticks, regimes = stream(market(5, rate=0.2), 400, 0.2, step_ms=HOUR)
    assert set(regimes) == set(REGIMES)
    labels = np.array([REGIMES.index(r) for r in regimes], dtype=np.int8)
    ts = np.array([t.ts for t in ticks])
    cut = np.flatnonzero(np.concatenate(([True], labels[1:] != labels[:-1], [True])))
    minutes = (ts[cut[1:] - 1] - ts[cut[:-1]]) / 60_000
    for i, r in enumerate(REGIME_PARAMS):
        mean = minutes[labels[cut[:-1]] == i][1:].mean()
        assert abs(mean / (30.0 * r.stay) - 1) < 0.4, (r.name, mean)
    # 1m closes of the stream (about 12 trades a minute): crisis is far more volatile live too
    minute = ts // 60_000
    last = np.flatnonzero(np.diff(minute)) if len(ts) else np.array([], dtype=np.intp)
    lr = np.diff(np.log([ticks[i].price for i in last]))
    at = labels[last][1:]
    assert lr[at == 3].std() > 3.5 * lr[at == 2].std()
    bars = market(5).candles("1m", 200_000, 0)
    live = np.bincount(labels, minlength=4) / len(labels)
    generated = np.bincount(bars.regime, minlength=4) / len(bars)
    assert np.abs(live - generated).max() < 0.15, (live, generated)


def test_regimes_mean_what_their_names_say() -> None:
    bars = market(13, rate=50.0).candles("1m", 200_000, 0)
    lr, at = log_returns(bars), bars.regime[1:]
    sd = {r: lr[at == i].std() for i, r in enumerate(REGIMES)}
    mean = {r: lr[at == i].mean() for i, r in enumerate(REGIMES)}
    assert sd["crisis"] > 3.5 * sd["sideways"]
    assert sd["sideways"] < sd["bull"] < sd["bear"] < sd["crisis"]
    assert mean["bull"] > 0 > mean["bear"] and mean["crisis"] < 0
    assert abs(mean["sideways"]) < 0.2 * mean["bull"]
    crisis = lr[at == 3] - mean["crisis"]
    assert np.mean(crisis**4) / np.mean(crisis**2) ** 2 > 5  # fat tails (a Gaussian: 3)
    # overlap: a quiet trend minute looks like a sideways minute
    assert abs(mean["bull"]) < 0.3 * sd["bull"] and abs(mean["bear"]) < 0.3 * sd["bear"]
    # sideways holds the price near where it entered; bull does not
    lengths, labels = runs(bars.regime)
    ends = np.cumsum(lengths)
    moves = np.abs(np.log(bars.close[ends[1:] - 1] / bars.close[ends[:-1] - 1]))
    calm, trend = moves[labels[1:] == 2], moves[labels[1:] == 0]
    assert np.median(calm) < 0.6 * np.median(trend)


# ---- history against the live stream --------------------------------------------------------

def live_bars(m: SimulatedMarket, hours: float, rate: float) -> SimBars:
    """1m bars built by the candle engine from the live stream, with the regime at the close."""
    engine = CandleEngine(m.market_id, ["1m"], grace_ms=0)
    bars, at_close = [], {}
    for t in range(0, int(hours * HOUR), 60_000):
        ticks, regimes = m.labelled_trades(t, t + 60_000, rate)
        if ticks:
            at_close[ticks[-1].ts - ticks[-1].ts % 60_000] = REGIMES.index(regimes[-1])
        bars += engine.on_ticks(ticks)
    bars = [b for b in bars + engine.flush() if b.closed]

    def col(f: str) -> NDArray[np.float64]:
        return np.array([getattr(b, f) for b in bars], dtype=np.float64)

    return SimBars(col("open_time").astype(np.int64), col("open"), col("high"), col("low"),
                   col("close"), col("volume"), col("buy_volume"), col("sell_volume"),
                   col("trade_count").astype(np.int64),
                   np.array([at_close[b.open_time] for b in bars], dtype=np.int8))


def bar_stats(b: SimBars) -> dict[str, float]:
    lr, at = log_returns(b), b.regime[1:]
    share = b.buy_volume / b.volume
    rng = np.log(b.high / b.low)
    out = {"volume": b.volume.mean(), "trades": b.trade_count.mean(),
           "share_mean": share.mean(), "share_sd": share.std(),
           "share_near_half": np.mean(np.abs(share - 0.5) < 0.02),
           "flow_corr": np.corrcoef(share[1:], lr)[0, 1]}
    for i, r in enumerate(REGIMES):
        out[f"sd_{r}"] = lr[at == i].std()
        out[f"abs_{r}"] = np.abs(lr[at == i]).mean()
        out[f"range_{r}"] = rng[b.regime == i].mean()
        out[f"n_{r}"] = float(np.sum(at == i))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_history_bars_have_the_statistics_of_bars_built_from_live_trades(seed: int) -> None:
    rate = 2.0  # 120 trades a bar, 60 hours: the live side takes a couple of seconds
    m = market(seed, rate, regime_seconds=900)
    live = bar_stats(live_bars(m, 60, rate))
    hist = bar_stats(m.history_bars("1m", 20_000, 2_000_000_000_000))

    def ratio(k: str) -> float:
        return hist[k] / live[k]

    assert abs(ratio("volume") - 1) < 0.03 and abs(ratio("trades") - 1) < 0.02
    assert abs(hist["share_mean"] - 0.5) < 0.005 and abs(live["share_mean"] - 0.5) < 0.01
    assert abs(ratio("share_sd") - 1) < 0.12 and abs(ratio("share_near_half") - 1) < 0.2
    assert 0 < live["flow_corr"] < 0.35 and abs(hist["flow_corr"] - live["flow_corr"]) < 0.1
    for r in REGIMES:
        if live[f"n_{r}"] < 80:
            continue
        # crisis has a hundred-odd live bars of Student-t(4) minutes: the std of so few swings
        # by a third with one burst, so its mean absolute return is compared, more loosely
        crisis = r == "crisis"
        k, tol = (f"abs_{r}", 0.3) if crisis else (f"sd_{r}", 0.25)
        assert abs(ratio(k) - 1) < tol, (k, hist[k], live[k])
        k, tol = f"range_{r}", 0.2 if crisis else 0.1
        assert abs(ratio(k) - 1) < tol, (k, hist[k], live[k])


def test_history_ends_in_the_live_regime_at_the_live_price() -> None:
    m = market(21, rate=50.0)
    m.trades(0, 90_000, 50.0)
    for tf in ("1m", "1h"):
        b = m.history_bars(tf, 600, 1_800_000_000_000)
        assert len(b) == 600 and b.regime[-1] == m.regime
        assert abs(math.log(b.close[-1]) - m.log_price) < 2e-4
        assert np.all(np.diff(b.open_time) == b.open_time[1] - b.open_time[0])
        assert np.all(b.high >= np.maximum(b.open, b.close))
        assert np.all(b.low <= np.minimum(b.open, b.close))
        assert np.allclose(b.buy_volume + b.sell_volume, b.volume, atol=1e-3)
    bars = m.history("1h", 600, 1_800_000_000_000)
    assert bars[-1].close_time == 1_800_000_000_000 - 1_800_000_000_000 % HOUR
    assert len({round(b.buy_volume / b.volume, 5) for b in bars}) > 300  # no fixed split
    assert min(b.trade_count for b in bars) > 100_000  # 50/s for an hour


def test_history_at_start_gives_the_bars_asked_for() -> None:
    # its cost, and the live stream's per trade, are measured by bench/simulator_stream.py
    bars = market(rate=50.0).history("1h", 600, 1_800_000_000_000)
    assert len(bars) == 600


# ---- the connector ---------------------------------------------------------------------------

async def test_a_blocked_simulator_skips_time_instead_of_piling_trades_up() -> None:
    market = MarketConfig(id="btcusdt", venue="crypto", connector="simulator", symbol="BTC/USDT")
    conn = SimulatorConnector(SimulatorConfig(market, rate=2000))
    out: Outbox = asyncio.Queue(1)
    task = asyncio.create_task(conn.run(out))
    try:
        await asyncio.sleep(1.5)  # nobody takes from the queue: the simulator waits on put()
        batches: list[list[Tick]] = []
        while len(batches) < 4:
            item = await asyncio.wait_for(out.get(), 2)
            if isinstance(item, list):
                batches.append(item)
    finally:
        task.cancel()
    # The first step after the wait covers at most MAX_STEP_MS of trades, not the 1.5 s it
    # was blocked; the rest is counted as skipped.
    assert conn.skipped_ms > 800
    for b in batches:
        assert b[-1].ts - b[0].ts <= MAX_STEP_MS
        assert len(b) < 2000 * MAX_STEP_MS / 1000 * 1.5


def test_a_resumed_simulator_goes_on_from_the_stored_price_with_moves_of_its_own() -> None:
    btc = MarketConfig(id="btcusdt", venue="crypto", connector="simulator", symbol="BTC/USDT",
                       start_price=60_000.0)
    s = Settings()
    t0 = 1_700_000_000_000

    def prices(resume: tuple[float, int] | None) -> list[float]:
        conn = SimulatorConnector(SimulatorConfig(btc, seed=s.sim_seed))
        if resume is not None:
            conn.resume(*resume)
        return [t.price for t in conn.sim.trades(t0, t0 + 5_000, 50.0)]

    def moves(p: list[float]) -> list[float]:
        return [round(b / a, 12) for a, b in zip(p, p[1:], strict=False)]

    fresh, resumed = prices(None), prices((42_000.0, t0 - 1))
    assert abs(fresh[0] / 60_000 - 1) < 1e-3 and abs(resumed[0] / 42_000 - 1) < 1e-3
    assert all(p == round(p, 2) for p in resumed)  # the configured price's decimals
    assert prices((42_000.0, t0 - 1)) == resumed  # the same store, the same stream
    assert moves(resumed) != moves(fresh)  # not the first run's path again
    assert moves(prices((42_000.0, t0))) != moves(resumed)  # each resume time its own
    for bad in (0.0, -5.0, math.nan, math.inf):  # a bad stored price is not resumed from
        assert prices((bad, t0 - 1)) == fresh
