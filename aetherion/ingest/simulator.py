"""Simulated markets: a regime-switching random walk with trades and an L2 book.

The latent regime follows a Markov chain over four states whose drift and volatility differ:
calm up, calm down, choppy (mean-reverting around an anchor) and turbulent (high volatility with
jumps). Aggressor flow leans with the drift. Everything a market produces is a function of its seed
and the times it is asked about, so a seed reproduces the same prices, sizes and sides.

Parameters are per minute of market time; ``regime_seconds`` is the mean stay in a calm regime
(turbulence is shorter). History for warming up is drawn from the same process, minute by minute,
and sampled at the timeframe.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import zlib
from dataclasses import dataclass

import structlog

from aetherion.config import MarketConfig, Settings
from aetherion.domain import BUY, SELL, TIMEFRAME_MS, Bar, BookSnapshot, Tick
from aetherion.ingest.base import Checkpoints, Connector, Outbox

__all__ = ["REGIME_PARAMS", "SimulatedMarket", "SimulatorConnector"]

log = structlog.get_logger(__name__)

BOOK_LEVELS = 20
BOOK_INTERVAL_S = 0.25
STEP_S = 0.05
# A step that comes late (the pipeline is behind) simulates at most this much time: the rest is
# skipped, as if the market had been quiet, so a simulator never outruns what it feeds.
MAX_STEP_MS = 500


@dataclass(frozen=True, slots=True)
class _Regime:
    name: str
    drift: float  # log-return per minute
    vol: float  # std of log-return per minute
    jump_rate: float = 0.0  # jumps per minute
    jump_size: float = 0.0  # std of a jump's log-return
    pull: float = 0.0  # per-minute pull of log price towards the anchor (choppy)
    stay: float = 1.0  # mean stay relative to regime_seconds


REGIME_PARAMS: tuple[_Regime, ...] = (
    _Regime("calm_up", drift=2.5e-4, vol=6e-4),
    _Regime("calm_down", drift=-2.5e-4, vol=9e-4),
    _Regime("choppy", drift=0.0, vol=4e-4, pull=0.08),
    _Regime("turbulent", drift=-3e-4, vol=2.6e-3, jump_rate=0.05, jump_size=6e-3, stay=0.4),
)
# Next regime when one ends (rows: from, columns: to); turbulence is entered rarely.
_NEXT = ((0.0, 0.45, 0.45, 0.10), (0.45, 0.0, 0.4, 0.15), (0.45, 0.45, 0.0, 0.10),
         (0.3, 0.3, 0.4, 0.0))
_VENUE_SCALE = {"crypto": 1.5, "us": 0.8, "nse": 1.0}


class SimulatedMarket:
    """The deterministic price process of one market."""

    def __init__(self, market_id: str, venue: str, start_price: float, seed: int,
                 regime_seconds: float = 1800.0) -> None:
        self.market_id = market_id
        self._rng = random.Random(seed * 1_000_003 + zlib.crc32(market_id.encode()))  # noqa: S311
        self._scale = _VENUE_SCALE.get(venue, 1.0)
        self.log_price = self.anchor = math.log(start_price)
        self.regime = 2
        self._regime_seconds = regime_seconds
        self._regime_left_s = self._draw_stay()
        self._spread = 1e-4 if venue == "crypto" else 2e-4
        self._trade_seq = 0
        self._book_seq = 0
        self._last_ts = 0

    @property
    def price(self) -> float:
        return math.exp(self.log_price)

    def _draw_stay(self) -> float:
        return self._rng.expovariate(1.0) * self._regime_seconds * REGIME_PARAMS[self.regime].stay

    def _switch(self) -> None:
        self.regime = self._rng.choices(range(4), weights=_NEXT[self.regime])[0]
        self._regime_left_s = self._draw_stay()
        self.anchor = self.log_price

    def _step(self, dt_s: float) -> float:
        """Advance the latent price by ``dt_s`` seconds; returns the log-return."""
        if dt_s > 60.0:  # long steps (history bars) go minute by minute, switching on time
            n = math.ceil(dt_s / 60.0)
            return sum(self._step(dt_s / n) for _ in range(n))
        self._regime_left_s -= dt_s
        if self._regime_left_s <= 0:
            self._switch()
        r = REGIME_PARAMS[self.regime]
        m = dt_s / 60.0
        # exact mean reversion over the step, stable for any step length (1h history bars too)
        ret = r.drift * m - (1.0 - math.exp(-r.pull * m)) * (self.log_price - self.anchor)
        ret += self._rng.gauss(0.0, r.vol * self._scale * math.sqrt(m))
        if r.jump_rate and self._rng.random() < r.jump_rate * m:
            ret += self._rng.gauss(0.0, r.jump_size)
        self.log_price += ret
        return ret

    def trades(self, start_ms: int, end_ms: int, rate: float) -> list[Tick]:
        """Trades in ``[start_ms, end_ms)``: Poisson arrivals at ``rate`` per second."""
        rng = self._rng
        out: list[Tick] = []
        t = max(float(start_ms), float(self._last_ts))
        recv = time.time_ns()
        while True:
            gap = rng.expovariate(rate) * 1000.0
            if t + gap >= end_ms:
                break
            t += gap
            ret = self._step(gap / 1000.0)
            lean = 0.5 + (0.15 if ret > 0 else -0.15 if ret < 0 else 0.0)
            side = BUY if rng.random() < lean else SELL
            half = self._spread / 2
            price = round(self.price * (1 + half if side == BUY else 1 - half), 2)
            size = round(rng.lognormvariate(-1.0, 1.0) * (0.5 if self._scale > 1 else 50.0), 4)
            self._trade_seq += 1
            ts = int(t)
            out.append(Tick(self.market_id, ts, price, max(size, 1e-4), side,
                            f"{ts}-{self._trade_seq}", recv))
        self._last_ts = int(t)
        return out

    def book(self, ts: int) -> BookSnapshot:
        """An L2 book of ``BOOK_LEVELS`` levels a side around the current price."""
        rng = self._rng
        mid, half = self.price, self._spread / 2
        tick_size = 0.01
        bids, asks = [], []
        for i in range(BOOK_LEVELS):
            off = half + i * self._spread
            depth = round(rng.lognormvariate(0.0, 0.6) * (1 + i * 0.3), 4)
            bids.append((round(mid * (1 - off) - i * tick_size, 2), depth))
            asks.append((round(mid * (1 + off) + i * tick_size, 2),
                         round(rng.lognormvariate(0.0, 0.6) * (1 + i * 0.3), 4)))
        self._book_seq += 1
        return BookSnapshot(self.market_id, ts, tuple(bids), tuple(asks), self._book_seq)

    def history(self, timeframe: str, limit: int, end_ms: int) -> list[Bar]:
        """``limit`` bars of ``timeframe`` ending before ``end_ms``, from a separate stream."""
        ms = TIMEFRAME_MS[timeframe]
        # The same process as live (same regime stays), sampled at the timeframe.
        sim = SimulatedMarket(self.market_id + "/" + timeframe, "", 1.0, self._rng.randrange(2**31),
                              regime_seconds=self._regime_seconds)
        sim._scale, sim.log_price, sim.anchor = self._scale, self.log_price, self.log_price
        start = end_ms - end_ms % ms - limit * ms
        closes = []
        for _ in range(limit):
            sim._step(ms / 1000)
            closes.append(sim.log_price)
        shift = self.log_price - (closes[-1] if closes else 0.0)  # history ends at today's price
        closes = [c + shift for c in closes]
        bars = []
        for i, c in enumerate(closes):
            o = closes[i - 1] if i else c - (closes[1] - c if limit > 1 else 0.0)
            wiggle = abs(sim._rng.gauss(0.0, abs(c - o) * 0.5 + 1e-4))
            hi, lo = math.exp(max(o, c) + wiggle), math.exp(min(o, c) - wiggle)
            vol = round(sim._rng.lognormvariate(3.0, 0.5) * ms / 60_000, 4)
            buy = round(vol * (0.55 if c > o else 0.45), 4)
            bars.append(Bar(self.market_id, timeframe, start + i * ms, math.exp(o), hi, lo,
                            math.exp(c), vol, buy, vol - buy, 1, True))
        return bars


class SimulatorConnector(Connector):
    """Streams a :class:`SimulatedMarket` in real time."""

    name = "simulator"

    def __init__(
        self, market: MarketConfig, settings: Settings, checkpoints: Checkpoints | None = None
    ) -> None:
        super().__init__(market, settings, checkpoints)
        s, m = settings, market
        self.sim = SimulatedMarket(m.id, m.venue, m.start_price or 100.0, s.sim_seed,
                                   s.sim_regime_seconds)
        self.skipped_ms = 0  # simulated time skipped because the pipeline was behind
        self._next_skip_log = 0.0

    async def run(self, out: Outbox) -> None:
        self.stats.state = "live"
        last = time.time_ns() // 1_000_000
        next_book = 0.0
        while True:
            await asyncio.sleep(STEP_S)
            now = time.time_ns() // 1_000_000
            if now - last > MAX_STEP_MS:
                self.skipped_ms += now - last - MAX_STEP_MS
                if (mono := time.monotonic()) >= self._next_skip_log:  # a line in 10 s at most
                    self._next_skip_log = mono + 10
                    log.warning("simulator behind the pipeline; time skipped",
                                market=self.market.id, total_skipped_ms=self.skipped_ms)
                last = now - MAX_STEP_MS
            batch = self.sim.trades(last, now, self.settings.sim_rate)
            last = now
            if batch:
                self.stats.on_messages(len(batch))
                await out.put(batch)
            if time.monotonic() >= next_book:
                next_book = time.monotonic() + BOOK_INTERVAL_S
                await out.put(self.sim.book(now))

    async def history(self, timeframe: str, limit: int, end_ms: int) -> list[Bar]:
        return self.sim.history(timeframe, limit, end_ms)
