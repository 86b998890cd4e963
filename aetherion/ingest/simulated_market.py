"""The simulated market: a regime-switching random walk with trades, bars and an L2 book
(streamed by :mod:`aetherion.ingest.simulator`, written to files by :mod:`aetherion.simulate`).

The latent regime is one of the project's four (:data:`aetherion.domain.REGIMES`). Parameters are
per minute of market time, before the venue's scale (crypto 1.5, us 0.8, nse 1.0), which
multiplies drift and volatility alike:

============ ============ ========== ================================ ==================== =======
regime       drift / min  vol / min  shocks                           mean stay (default)  share
============ ============ ========== ================================ ==================== =======
``bull``     +1.4e-4      6e-4       Gaussian                         1.5 x = 45 min       41 %
``bear``     -1.5e-4      8e-4       Student-t, 6 degrees of freedom  1.0 x = 30 min       23 %
``sideways`` 0, pulled    4e-4       Gaussian, mean-reverting to the  1.0 x = 30 min       31 %
             back                    price it entered at (5 %/min)
``crisis``   -4.3e-4      1.8e-3     Student-t, 4 degrees of freedom  0.5 x = 15 min       5 %
============ ============ ========== ================================ ==================== =======

Why: bull and bear are trends whose drift is only about a fifth of a minute's volatility, so a
single minute of either looks like a sideways minute and a regime shows itself over tens of bars,
as in real markets. Sideways is the calm level; bear is somewhat more volatile than bull; crisis is
4.5 x the calm volatility, falls, and is fat-tailed: each minute's variance is scaled by
``(nu - 2) / chi2(nu)``, which makes that minute's return exactly Student-t (a volatility burst per
minute) while trades within it stay Gaussian, so the tails survive aggregation into bars. The
drifts roughly cancel over the long run (the price neither explodes nor dies).

Stays are log-normal (sigma 1: a coefficient of variation of 1.3, from a few minutes to several
hours) with the means above, as multiples of ``regime_seconds`` (``AETHERION_SIM_REGIME_SECONDS``,
1800 s). When a stay ends, the next regime is drawn from :data:`TRANSITIONS` (a Markov chain
without self-transitions; crisis is entered rarely and mostly left for bear or sideways). The
share column is the long-run share of time.

Trades arrive as a Poisson process at ``rate`` per second; sizes are log-normal; the aggressor is
the buyer with probability 0.65 when the trade's price step is up and 0.35 when it is down, so
order flow and returns are correlated within a bar. Every trade can be labelled with the regime in
force (:meth:`SimulatedMarket.labelled_trades`).

History (:meth:`SimulatedMarket.history`) and :meth:`SimulatedMarket.candles` make bars without
making trades: time is cut at bar edges, minutes and regime switches, and each piece draws its trade
count (Poisson), its return, its extremes (a Brownian bridge's, less the expected shortfall of
sampling at trades), its up-steps given the return (the per-trade process's mean and covariance),
its buyers from those, and volumes with the summed sizes' mean and variance. History ends in the
live regime (the chain run backwards from it) at the live price. A seed reproduces everything.
"""

from __future__ import annotations

import bisect
import math
import random
import time
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from aetherion.domain import BUY, REGIMES, SELL, TIMEFRAME_MS, Bar, BookSnapshot, Tick

__all__ = ["REGIME_PARAMS", "TRANSITIONS", "SimBars", "SimulatedMarket"]

BOOK_LEVELS = 20
MINUTE_MS: Final = 60_000
STAY_SIGMA: Final = 1.0  # log-normal sigma of a regime's stay
LEAN: Final = 0.15  # P(buyer aggressor) is 0.5 + LEAN after an up-step, 0.5 - LEAN after a down
SIZE_MU, SIZE_SIGMA = -1.0, 1.0  # log-normal trade size, times the venue's size scale
# A walk's max sampled at its steps falls short of the continuous max by this many step stds
# (Broadie & Glasserman 1997: -zeta(1/2) / sqrt(2 pi)).
_DISCRETE_MAX: Final = 0.5826
# Per trade, the up-step indicator against the piece's standardized return (exponential gaps):
# slope Gamma(3/2) / sqrt(2 pi) = 1 / sqrt(8) per sqrt(trade), leaving variance 1/4 - 1/8.
_UP_SLOPE: Final = 1.0 / math.sqrt(8.0)
_UP_RESID: Final = math.sqrt(0.125)


@dataclass(frozen=True, slots=True)
class _Regime:
    name: str
    drift: float  # log-return per minute
    vol: float  # std of log-return per minute
    nu: float = 0.0  # Student-t degrees of freedom of a minute's shock (0: Gaussian)
    pull: float = 0.0  # per-minute pull of log price towards the price at entry
    stay: float = 1.0  # mean stay relative to regime_seconds


REGIME_PARAMS: Final[tuple[_Regime, ...]] = (
    _Regime("bull", drift=1.4e-4, vol=6e-4, stay=1.5),
    _Regime("bear", drift=-1.5e-4, vol=8e-4, nu=6.0, stay=1.0),
    _Regime("sideways", drift=0.0, vol=4e-4, pull=0.05, stay=1.0),
    _Regime("crisis", drift=-4.3e-4, vol=1.8e-3, nu=4.0, stay=0.5),
)
#: Next regime when a stay ends (rows: from, columns: to, in REGIMES order).
TRANSITIONS: Final[tuple[tuple[float, ...], ...]] = (
    (0.0, 0.30, 0.60, 0.10),
    (0.35, 0.0, 0.45, 0.20),
    (0.55, 0.35, 0.0, 0.10),
    (0.20, 0.40, 0.40, 0.0),
)
_VENUE_SCALE = {"crypto": 1.5, "us": 0.8, "nse": 1.0}


def _chain_tables() -> tuple[list[list[float]], list[list[float]], list[float]]:
    """Cumulative rows of the chain and of its time reversal, and the chance of each regime at
    a random instant (in force, weighted by stay)."""
    p = np.array(TRANSITIONS)
    w, v = np.linalg.eig(p.T)
    pi = np.abs(np.real(v[:, int(np.argmax(np.real(w)))]))
    pi /= pi.sum()
    back = (p * pi[:, None]).T / pi[:, None]  # P(previous = j | now = i)
    at = pi * np.array([r.stay for r in REGIME_PARAMS])
    return (np.cumsum(p, axis=1).tolist(), np.cumsum(back, axis=1).tolist(),
            np.cumsum(at / at.sum()).tolist())


_NEXT_CUM, _PREV_CUM, _AT_CUM = _chain_tables()


def _pick(cum: list[float], u: float) -> int:
    return min(bisect.bisect_right(cum, u * cum[-1]), len(cum) - 1)


@dataclass(slots=True)
class SimBars:
    """Bars as columns (what :meth:`SimulatedMarket.candles` returns); ``regime`` indexes
    :data:`~aetherion.domain.REGIMES` and is the regime in force at each bar's close."""

    open_time: NDArray[np.int64]
    open: NDArray[np.float64]
    high: NDArray[np.float64]
    low: NDArray[np.float64]
    close: NDArray[np.float64]
    volume: NDArray[np.float64]
    buy_volume: NDArray[np.float64]
    sell_volume: NDArray[np.float64]
    trade_count: NDArray[np.int64]
    regime: NDArray[np.int8]

    def __len__(self) -> int:
        return len(self.open_time)


@dataclass(slots=True)
class _Pieces:
    """Time cut at bar edges, minutes and regime switches; arrays per piece."""

    t0: NDArray[np.float64]  # piece start, epoch ms
    dt: NDArray[np.float64]  # minutes
    regime: NDArray[np.intp]
    first: NDArray[np.bool_]  # a piece that starts a regime stay (or the span)
    bar: NDArray[np.intp]


class SimulatedMarket:
    """The deterministic price process of one market."""

    def __init__(self, market_id: str, venue: str, start_price: float, seed: int,
                 regime_seconds: float = 1800.0, rate: float = 50.0,
                 price: float | None = None) -> None:
        """``price``: where the walk starts when not at ``start_price`` (a resumed market; the
        price's decimals stay those of ``start_price``)."""
        self.market_id = market_id
        self._seed = (seed * 1_000_003 + zlib.crc32(market_id.encode())) % 2**63
        self._rng = random.Random(self._seed)  # noqa: S311 - a simulation, not a secret
        self._scale = _VENUE_SCALE.get(venue, 1.0)
        self._size_scale = 0.5 if self._scale > 1 else 50.0
        self._spread = 1e-4 if venue == "crypto" else 2e-4
        self._decimals = max(2, 4 - math.floor(math.log10(start_price)))  # 2 from 100 up
        self.rate = rate
        self.log_price = self.anchor = math.log(price or start_price)
        # log-normal mu of each regime's stay in ms (its mean is stay x regime_seconds)
        self._stay_mu = [math.log(regime_seconds * 1000.0 * r.stay) - STAY_SIGMA**2 / 2
                         for r in REGIME_PARAMS]
        # The process is stationary from the start: the regime in force at a random instant,
        # part-way through a stay drawn length-biased (a random instant falls in longer stays).
        self.regime = _pick(_AT_CUM, self._rng.random())
        mu = self._stay_mu[self.regime] + STAY_SIGMA**2
        self._stay_ms = self._rng.lognormvariate(mu, STAY_SIGMA)
        self._left_ms = self._stay_ms * (1.0 - self._rng.random())
        self._minute_end = 0.0  # the minute whose volatility burst is drawn ends here
        self._drift = self._sd = self._pull = 0.0  # per ms, per sqrt(ms), per ms
        self._clock = 0.0  # simulated up to here (epoch ms)
        self._trade_seq = self._book_seq = 0

    @property
    def price(self) -> float:
        return math.exp(self.log_price)

    # ---- the live process, trade by trade -----------------------------------------------

    def _advance(self, t: float) -> None:
        """At ``t`` a stay ended or a minute began: switch regime if due, draw the minute's
        volatility burst and set the per-ms parameters."""
        rng = self._rng
        while self._left_ms <= 0:
            self.regime = _pick(_NEXT_CUM[self.regime], rng.random())
            self._stay_ms = rng.lognormvariate(self._stay_mu[self.regime], STAY_SIGMA)
            self._left_ms += self._stay_ms
            self.anchor = self.log_price
        r = REGIME_PARAMS[self.regime]
        burst = (r.nu - 2.0) / rng.gammavariate(r.nu / 2.0, 2.0) if r.nu else 1.0
        self._minute_end = t - t % MINUTE_MS + MINUTE_MS
        self._drift = r.drift * self._scale / MINUTE_MS
        self._sd = r.vol * self._scale * math.sqrt(burst / MINUTE_MS)
        self._pull = r.pull / MINUTE_MS

    def trades(self, start_ms: int, end_ms: int, rate: float) -> list[Tick]:
        """Trades in ``[start_ms, end_ms)``: Poisson arrivals at ``rate`` per second."""
        return self._trades(start_ms, end_ms, rate, None)

    def labelled_trades(self, start_ms: int, end_ms: int,
                        rate: float) -> tuple[list[Tick], list[str]]:
        """:meth:`trades` and, for each, the regime in force when it happened."""
        regimes: list[str] = []
        return self._trades(start_ms, end_ms, rate, regimes), regimes

    def _trades(self, start_ms: int, end_ms: int, rate: float,
                regimes: list[str] | None) -> list[Tick]:
        rng = self._rng
        expo, gauss, rand, lognorm = rng.expovariate, rng.gauss, rng.random, rng.lognormvariate
        exp, sqrt = math.exp, math.sqrt
        up_buy, down_buy = 0.5 + LEAN, 0.5 - LEAN
        hi, lo = 1.0 + self._spread / 2, 1.0 - self._spread / 2
        size_scale, dec, market = self._size_scale, self._decimals, self.market_id
        mean_gap = 1000.0 / rate
        out: list[Tick] = []
        t = max(float(start_ms), self._clock)
        x = self.log_price
        recv = time.time_ns()
        while True:
            gap = expo(1.0) * mean_gap
            last = t + gap >= end_ms
            if last:  # no trade before the end: the price still moves until then
                gap = max(end_ms - t, 0.0)
            t += gap
            self._left_ms -= gap
            if self._left_ms <= 0 or t >= self._minute_end:
                self.log_price = x
                self._advance(t)
            ret = self._drift * gap + self._sd * sqrt(gap) * gauss(0.0, 1.0)
            if self._pull:
                ret += math.expm1(-self._pull * gap) * (x - self.anchor)
            x += ret
            if last:
                break
            side = BUY if rand() < (up_buy if ret > 0 else down_buy) else SELL
            size = round(lognorm(SIZE_MU, SIZE_SIGMA) * size_scale, 4)
            self._trade_seq += 1
            ts = int(t)
            out.append(Tick(market, ts, round(exp(x) * (hi if side == BUY else lo), dec),
                            max(size, 1e-4), side, f"{ts}-{self._trade_seq}", recv))
            if regimes is not None:
                regimes.append(REGIMES[self.regime])
        self.log_price = x
        self._clock = t
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

    # ---- bars without trades: history and long simulations --------------------------------

    def _np_rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self._seed, *(k % 2**63 for k in keys)])

    def history(self, timeframe: str, limit: int, end_ms: int) -> list[Bar]:
        """``limit`` bars of ``timeframe`` ending before ``end_ms``, in the regime and at the
        price the live market is in now (an interval without trades makes no bar)."""
        b = self.history_bars(timeframe, limit, end_ms)
        cols = (b.open_time, b.open, b.high, b.low, b.close, b.volume, b.buy_volume,
                b.sell_volume, b.trade_count)
        rows = zip(*(col.tolist() for col in cols), strict=True)
        return [Bar(self.market_id, timeframe, t, o, h, lo, c, v, bv, sv, n, True)
                for t, o, h, lo, c, v, bv, sv, n in rows]

    def history_bars(self, timeframe: str, limit: int, end_ms: int) -> SimBars:
        """:meth:`history` as columns, with each bar's true regime."""
        ms = TIMEFRAME_MS[timeframe]
        start = end_ms - end_ms % ms - limit * ms
        rng = self._np_rng(zlib.crc32(timeframe.encode()), start, limit)
        age = self._stay_ms - self._left_ms
        starts, regs = self._stays_back(rng, start, start + limit * ms, age)
        return self._bars(rng, starts, regs, start, limit, ms, self.log_price)

    def candles(self, timeframe: str, n: int, start_ms: int) -> SimBars:
        """``n`` bars of ``timeframe`` from ``start_ms`` (aligned down) onwards, from the
        current regime and price, with the regime at each bar's close."""
        ms = TIMEFRAME_MS[timeframe]
        start = start_ms - start_ms % ms
        rng = self._np_rng(zlib.crc32(timeframe.encode()), start, n, 1)
        starts, regs = self._stays_forward(rng, start, start + n * ms)
        return self._bars(rng, starts, regs, start, n, ms, None)

    def _stays_forward(self, rng: np.random.Generator, start: float,
                       end: float) -> tuple[list[float], list[int]]:
        starts, regs = [start], [self.regime]
        t = start + self._left_ms
        while t < end:
            regs.append(_pick(_NEXT_CUM[regs[-1]], float(rng.random())))
            starts.append(t)
            t += float(rng.lognormal(self._stay_mu[regs[-1]], STAY_SIGMA))
        return starts, regs

    def _stays_back(self, rng: np.random.Generator, start: float, end: float,
                    age_ms: float) -> tuple[list[float], list[int]]:
        """Stays covering ``[start, end)`` that end in the current regime, ``age_ms`` into it:
        the time-reversed chain run back from now (stays are the same either way)."""
        starts, regs = [end - age_ms], [self.regime]
        while starts[-1] > start:
            regs.append(_pick(_PREV_CUM[regs[-1]], float(rng.random())))
            starts.append(starts[-1] - float(rng.lognormal(self._stay_mu[regs[-1]], STAY_SIGMA)))
        return starts[::-1], regs[::-1]

    def _pieces(self, starts: list[float], regs: list[int], start: int, n: int,
                bar_ms: int) -> _Pieces:
        end = start + n * bar_ms
        first_minute = start - start % MINUTE_MS + MINUTE_MS
        s = np.asarray(starts, dtype=np.float64)
        edges = np.unique(np.concatenate((
            np.arange(n + 1, dtype=np.float64) * bar_ms + start,
            np.arange(first_minute, end, MINUTE_MS, dtype=np.float64),
            s[(s > start) & (s < end)])))
        t0 = edges[:-1]
        stay = np.searchsorted(s, t0, side="right") - 1
        first = np.empty(len(t0), dtype=np.bool_)
        first[0] = True
        first[1:] = stay[1:] != stay[:-1]
        bar = ((t0 - start) // bar_ms).astype(np.intp)
        return _Pieces(t0, np.diff(edges) / MINUTE_MS, np.asarray(regs)[stay], first, bar)

    def _bars(self, rng: np.random.Generator, starts: list[float], regs: list[int], start: int,
              n: int, bar_ms: int, end_log_price: float | None) -> SimBars:
        pc = self._pieces(starts, regs, start, n, bar_ms)
        sd, inc = self._shocks(rng, pc)
        x = self._path(pc, inc, self.log_price)
        if end_log_price is not None:  # history ends at the live price
            x += end_log_price - x[-1]
        trades = rng.poisson(self.rate * 60.0 * pc.dt)
        buys = self._buys(rng, x, sd, trades)
        hi, lo = self._extremes(rng, x, sd, trades, buys)
        return self._aggregate(rng, pc, x, hi, lo, trades, buys)

    def _shocks(self, rng: np.random.Generator,
                pc: _Pieces) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Per piece: the std of its diffusion and its increment (before any pull)."""
        drift, vol, nu, pull = (np.array([getattr(r, f) for r in REGIME_PARAMS])[pc.regime]
                                for f in ("drift", "vol", "nu", "pull"))
        # One volatility burst per minute and stay, as live draws it.
        unit = np.cumsum(pc.first | (pc.t0 % MINUTE_MS == 0)) - 1
        unit_nu = np.zeros(int(unit[-1]) + 1)
        unit_nu[unit] = nu
        fat = unit_nu > 0
        burst = np.ones_like(unit_nu)
        burst[fat] = (unit_nu[fat] - 2.0) / rng.chisquare(unit_nu[fat])
        kdt = 2.0 * pull * pc.dt  # the exact variance of a mean-reverting step (1 without pull)
        ou = np.where(kdt > 0, -np.expm1(-kdt) / np.maximum(kdt, 1e-300), 1.0)
        sd = vol * self._scale * np.sqrt(burst[unit] * pc.dt * ou)
        return sd, drift * self._scale * pc.dt + sd * rng.standard_normal(len(sd))

    @staticmethod
    def _path(pc: _Pieces, inc: NDArray[np.float64], x0: float) -> NDArray[np.float64]:
        """Log price at every piece edge; within a sideways stay, exact mean reversion to the
        price the stay began at."""
        x = np.empty(len(inc) + 1)
        x[0] = x0
        bounds = [*np.flatnonzero(pc.first).tolist(), len(inc)]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            k = REGIME_PARAMS[int(pc.regime[a])].pull
            if not k:
                x[a + 1:b + 1] = x[a] + np.cumsum(inc[a:b])
                continue
            t = np.cumsum(pc.dt[a:b]) * k  # y_j = sum_i<=j inc_i exp(-k (T_j - T_i))
            for c in range(0, b - a, 256):  # in blocks, so exp(k T) stays finite
                tc = t[c:c + 256] - t[c]
                y0 = x[a + c] - x[a]
                x[a + c + 1:a + c + 1 + len(tc)] = x[a] + np.exp(-tc) * (
                    y0 * math.exp(-(t[c] - (t[c - 1] if c else 0.0)))
                    + np.cumsum(inc[a + c:a + c + len(tc)] * np.exp(tc)))
        return x

    def _extremes(self, rng: np.random.Generator, x: NDArray[np.float64],
                  sd: NDArray[np.float64], trades: NDArray[np.int64],
                  buys: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Log of the highest and lowest trade in each piece: a Brownian bridge's extremes less
        the shortfall of sampling them at the buys (at the ask) or the sells (at the bid)."""
        mid, d2, v2 = (x[1:] + x[:-1]) / 2, (x[1:] - x[:-1]) ** 2, 2.0 * sd**2
        top = mid + np.sqrt(d2 + v2 * rng.exponential(size=len(sd))) / 2
        bottom = mid - np.sqrt(d2 + v2 * rng.exponential(size=len(sd))) / 2
        sells, g = trades - buys, _DISCRETE_MAX * sd
        ask, bid = math.log1p(self._spread / 2), math.log1p(-self._spread / 2)
        hi, lo = np.full(len(sd), -np.inf), np.full(len(sd), np.inf)
        for n, off in ((buys, ask), (sells, bid)):
            some = n > 0
            short = g[some] / np.sqrt(n[some])
            hi[some] = np.maximum(hi[some], top[some] - short + off)
            lo[some] = np.minimum(lo[some], bottom[some] + short + off)
        return hi, lo

    @staticmethod
    def _buys(rng: np.random.Generator, x: NDArray[np.float64], sd: NDArray[np.float64],
              trades: NDArray[np.int64]) -> NDArray[np.int64]:
        """Buyer-initiated trades per piece: up-steps given the piece's return, each a buy
        with 0.5 + LEAN, and down-steps, each a buy with 0.5 - LEAN."""
        z = (x[1:] - x[:-1]) / sd
        up = np.rint(trades / 2 + np.sqrt(trades) * (_UP_SLOPE * z + _UP_RESID
                                                     * rng.standard_normal(len(z))))
        up_n = np.clip(up, 0, trades).astype(np.int64)
        buys: NDArray[np.int64] = (rng.binomial(up_n, 0.5 + LEAN)
                                   + rng.binomial(trades - up_n, 0.5 - LEAN))
        return buys

    def _volume(self, rng: np.random.Generator, n: NDArray[np.int64]) -> NDArray[np.float64]:
        """The sum of ``n`` trade sizes: log-normal with the sum's mean and variance."""
        k = np.maximum(n, 1)
        s2 = np.log1p(np.expm1(SIZE_SIGMA**2) / k)
        mean = k * math.exp(SIZE_MU + SIZE_SIGMA**2 / 2) * self._size_scale
        v = rng.lognormal(np.log(mean) - s2 / 2, np.sqrt(s2))
        out: NDArray[np.float64] = np.where(n > 0, np.round(v, 4), 0.0)
        return out

    def _aggregate(self, rng: np.random.Generator, pc: _Pieces, x: NDArray[np.float64],
                   hi: NDArray[np.float64], lo: NDArray[np.float64],
                   trades: NDArray[np.int64], buys: NDArray[np.int64]) -> SimBars:
        first = np.flatnonzero(np.concatenate(([True], pc.bar[1:] != pc.bar[:-1])))
        after = np.append(first[1:], len(pc.bar))  # the edge where each bar closes
        count, n_buy = np.add.reduceat(trades, first), np.add.reduceat(buys, first)
        half = self._spread / 2
        bounce = np.where(rng.random((2, len(first))) < 0.5, half, -half)
        op, cl = np.exp(x[first]) * (1 + bounce[0]), np.exp(x[after]) * (1 + bounce[1])
        high = np.maximum(np.exp(np.maximum.reduceat(hi, first)), np.maximum(op, cl))
        low = np.minimum(np.exp(np.minimum.reduceat(lo, first)), np.minimum(op, cl))
        buy_v, sell_v = self._volume(rng, n_buy), self._volume(rng, count - n_buy)
        d = self._decimals
        bars = SimBars(pc.t0[first].astype(np.int64), op.round(d), high.round(d), low.round(d),
                       cl.round(d), (buy_v + sell_v).round(4), buy_v, sell_v,
                       count.astype(np.int64), pc.regime[after - 1].astype(np.int8))
        keep = count > 0  # an interval without trades makes no bar
        if keep.all():
            return bars
        return SimBars(*(getattr(bars, f)[keep] for f in SimBars.__slots__))
