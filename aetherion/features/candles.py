"""Multi-timeframe time bars, built incrementally from batches of trades.

Only the finest timeframe is touched per trade; coarser bars are folds of closed finer bars.
Bars are aligned to UTC epoch multiples of their timeframe. An interval without trades makes no
bar. A bar closes when a trade of a later interval arrives, when the clock passes its end plus a
grace (``on_clock``), or at the end of a replay (``flush``).

A trade for a bar that has already closed revises it: the stored bar keeps its key, its
``revision`` goes up by one and the revised bar is emitted again; a bar that first appears late
(its interval had closed with no trade) is emitted with revision 1. Emitted bars with revision 0 are
new closes; later stages act on those only, so what they said stays what was known then, while the
next bar builds on the revised values. Closed bars are remembered for revisions over a bounded
horizon (``keep`` bars per timeframe); an older late trade is counted in ``late_dropped``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from aetherion.domain import BEFORE_ANY_TIME, BUY, SELL, TIMEFRAME_MS, Bar, Tick

__all__ = ["CandleEngine"]

class _State:
    """A bar being built or remembered; mutable, private to the engine."""

    __slots__ = (
        "buy", "close", "count", "first_ts", "high", "last_ts", "low", "open",
        "open_time", "revision", "sell", "sided", "volume",
    )

    def __init__(self, open_time: int, ts: int, price: float) -> None:
        self.open_time = open_time
        self.open = self.high = self.low = self.close = price
        self.volume = self.buy = self.sell = 0.0
        self.count = 0
        self.first_ts = self.last_ts = ts
        self.sided = True
        self.revision = 0

    def add(self, ts: int, price: float, size: float, side: int) -> None:
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        if ts >= self.last_ts:
            self.close, self.last_ts = price, ts
        if ts < self.first_ts:
            self.open, self.first_ts = price, ts
        self.volume += size
        self.count += 1
        if side == BUY:
            self.buy += size
        elif side == SELL:
            self.sell += size
        else:
            self.sided = False

    def merge(self, o: _State) -> None:
        """Fold a finer bar of the same interval into this one."""
        if o.high > self.high:
            self.high = o.high
        if o.low < self.low:
            self.low = o.low
        if o.last_ts >= self.last_ts:
            self.close, self.last_ts = o.close, o.last_ts
        if o.first_ts < self.first_ts:
            self.open, self.first_ts = o.open, o.first_ts
        self.volume += o.volume
        self.buy += o.buy
        self.sell += o.sell
        self.count += o.count
        self.sided = self.sided and o.sided

    @classmethod
    def of(cls, b: Bar) -> _State:
        s = cls(b.open_time, b.first_ts or b.open_time, b.open)
        s.high, s.low, s.close, s.last_ts = b.high, b.low, b.close, b.last_ts or b.open_time
        s.volume, s.buy, s.sell, s.count, s.sided = (
            b.volume, b.buy_volume, b.sell_volume, b.trade_count, b.sided)
        return s

    def copy(self) -> _State:
        s = _State(self.open_time, self.first_ts, self.open)
        s.merge(self)
        return s

    def freeze(self, market: str, timeframe: str, closed: bool) -> Bar:
        return Bar(
            market, timeframe, self.open_time, self.open, self.high, self.low, self.close,
            self.volume, self.buy, self.sell, self.count, closed, self.revision,
            self.first_ts, self.last_ts, self.sided,
        )


def _sum(start: float, xs: NDArray[np.float64]) -> float:
    """``start + xs[0] + xs[1] + ...`` in that order (numpy's ``sum`` pairs terms up, which
    rounds differently from a running total)."""
    return float(np.cumsum(np.concatenate(([start], xs)))[-1])


class CandleEngine:
    """Bars of one market at every configured timeframe."""

    def __init__(
        self, market: str, timeframes: Sequence[str], grace_ms: int = 500, keep: int = 2000
    ) -> None:
        if not timeframes:
            raise ValueError("at least one timeframe is needed")
        self.market = market
        self.timeframes = tuple(sorted(set(timeframes), key=TIMEFRAME_MS.__getitem__))
        self._tf_ms = tuple(TIMEFRAME_MS[t] for t in self.timeframes)
        base = self._tf_ms[0]
        bad = [t for t, ms in zip(self.timeframes, self._tf_ms, strict=True) if ms % base]
        if bad:
            raise ValueError(f"timeframes {bad} are not whole multiples of {self.timeframes[0]}")
        self.grace_ms = grace_ms
        self.keep = keep
        self.late_dropped = 0
        self._open: list[_State | None] = [None] * len(self._tf_ms)
        self._closed: list[dict[int, _State]] = [{} for _ in self._tf_ms]
        # every interval ending by then is closed
        self._closed_until = [BEFORE_ANY_TIME] * len(self._tf_ms)

    # ---- trades in ------------------------------------------------------------------------

    def on_ticks(self, ticks: Sequence[Tick]) -> list[Bar]:
        """Add a batch of trades; returns the bars that closed or were revised, in order."""
        return self._run(ticks)

    def on_trades(
        self, ts: ArrayLike, price: ArrayLike, size: ArrayLike, side: ArrayLike
    ) -> list[Bar]:
        """Columnar form of :meth:`on_ticks` (the replay). A chunk in time order that starts at
        or after the open bar's last trade is folded a bar at a time with numpy, with the same
        results to the bit as trade by trade (sums are sequential); any other chunk goes trade
        by trade."""
        t = np.asarray(ts, dtype=np.int64)
        p = np.asarray(price, dtype=np.float64)
        q = np.asarray(size, dtype=np.float64)
        s = np.asarray(side, dtype=np.int64)
        if not len(t):
            return []
        cur = self._open[0]
        base = self._tf_ms[0]
        first = int(t[0])
        if np.any(t[1:] < t[:-1]) or (
            first < cur.last_ts if cur is not None
            else first - first % base + base <= self._closed_until[0]
        ):
            m = self.market
            return self._run([Tick(m, *row) for row in zip(
                t.tolist(), p.tolist(), q.tolist(), s.tolist(), strict=True)])
        return self._run_sorted(t, p, q, s)

    def _run_sorted(self, t: NDArray[np.int64], p: NDArray[np.float64], q: NDArray[np.float64],
                    s: NDArray[np.int64]) -> list[Bar]:
        out: list[Bar] = []
        keys = t - t % self._tf_ms[0]
        cuts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
        starts = np.concatenate(([0], cuts))
        highs = np.maximum.reduceat(p, starts).tolist()
        lows = np.minimum.reduceat(p, starts).tolist()
        unsided = np.add.reduceat((s != BUY) & (s != SELL), starts).tolist()
        buy = np.where(s == BUY, q, 0.0)  # adding 0.0 leaves a sum as it was
        sell = np.where(s == SELL, q, 0.0)
        ends = [*cuts.tolist(), len(t)]
        cur = self._open[0]
        for j, a in enumerate(starts.tolist()):
            e = ends[j]
            key = int(keys[a])
            if cur is None or cur.open_time != key:
                if cur is not None:
                    self._close_finest(out)
                self._roll(key, out)
                cur = self._open[0] = _State(key, int(t[a]), float(p[a]))
            if highs[j] > cur.high:
                cur.high = highs[j]
            if lows[j] < cur.low:
                cur.low = lows[j]
            cur.close, cur.last_ts = float(p[e - 1]), int(t[e - 1])
            cur.volume = _sum(cur.volume, q[a:e])
            cur.buy = _sum(cur.buy, buy[a:e])
            cur.sell = _sum(cur.sell, sell[a:e])
            cur.count += e - a
            if unsided[j]:
                cur.sided = False
        return out

    def _run(self, ticks: Iterable[Tick]) -> list[Bar]:  # noqa: C901
        out: list[Bar] = []
        base = self._tf_ms[0]
        cur = self._open[0]
        start, end = (cur.open_time, cur.open_time + base) if cur else (0, -1)
        # The open finest bar lives in locals while trades fall inside it (the hot loop: one
        # comparison chain per trade, no call); it is written back before anything else runs.
        if cur is not None:
            hi, lo, op, cl, first, last = cur.high, cur.low, cur.open, cur.close, \
                cur.first_ts, cur.last_ts
            vol, buy, sell, cnt, sided = cur.volume, cur.buy, cur.sell, cur.count, cur.sided
        else:
            hi = lo = op = cl = vol = buy = sell = 0.0
            first = last = cnt = 0
            sided = True
        for tick in ticks:  # the per-trade loop, inlined on purpose
            t, p, q, s = tick.ts, tick.price, tick.size, tick.side
            if start <= t < end:
                if p > hi:
                    hi = p
                elif p < lo:
                    lo = p
                if t >= last:
                    cl, last = p, t
                elif t < first:
                    op, first = p, t
                vol += q
                cnt += 1
                if s == BUY:
                    buy += q
                elif s == SELL:
                    sell += q
                else:
                    sided = False
                continue
            if cur is not None:  # write the locals back before the slow path reads the state
                cur.high, cur.low, cur.open, cur.close, cur.first_ts, cur.last_ts = \
                    hi, lo, op, cl, first, last
                cur.volume, cur.buy, cur.sell, cur.count, cur.sided = vol, buy, sell, cnt, sided
            if t - t % base + base <= self._closed_until[0]:
                self._late(t, p, q, s, out)
                continue
            if cur is not None:
                self._close_finest(out)
            key = t - t % base
            self._roll(key, out)
            cur = self._open[0] = _State(key, t, p)
            cur.add(t, p, q, s)
            start, end = key, key + base
            hi, lo, op, cl, first, last = cur.high, cur.low, cur.open, cur.close, \
                cur.first_ts, cur.last_ts
            vol, buy, sell, cnt, sided = cur.volume, cur.buy, cur.sell, cur.count, cur.sided
        if cur is not None:
            cur.high, cur.low, cur.open, cur.close, cur.first_ts, cur.last_ts = \
                hi, lo, op, cl, first, last
            cur.volume, cur.buy, cur.sell, cur.count, cur.sided = vol, buy, sell, cnt, sided
        return out

    def on_bars(self, bars: Sequence[Bar]) -> list[Bar]:
        """Closed bars of the finest timeframe (candle input, oldest first): each is emitted as
        is and folded into the coarser timeframes, which close when their interval has ended."""
        out: list[Bar] = []
        base = self._tf_ms[0]
        for b in bars:
            if b.timeframe != self.timeframes[0] or b.open_time % base:
                raise ValueError(f"a {self.timeframes[0]} bar was expected, got {b.timeframe} "
                                 f"at {b.open_time}")
            if b.open_time < self._closed_until[0]:
                raise ValueError(f"bar at {b.open_time} is not after the previous one")
            if self._open[0] is not None:
                self._close_finest(out)
            self._roll(b.open_time, out)
            self._open[0] = _State.of(b)
            self._close_finest(out)
            self._roll(b.open_time + base, out)
        return out

    def seed(self, bars: Sequence[Bar]) -> None:
        """Closed finest bars from a venue's history, oldest first, ending where live trades
        begin: the ones inside intervals still open at coarser timeframes are folded into those
        bars (nothing is emitted), so the first live coarse bar is whole, not just the trades
        seen since the start."""
        if not bars or self._open[0] is not None:
            return
        base = self._tf_ms[0]
        end = bars[-1].open_time + base
        for k in range(1, len(self._tf_ms)):
            start = end - end % self._tf_ms[k]
            for b in bars:
                if b.open_time < start or b.timeframe != self.timeframes[0]:
                    continue
                st = self._open[k]
                if st is None:
                    st = self._open[k] = _State.of(b)
                    st.open_time = start
                else:
                    st.merge(_State.of(b))
            self._closed_until[k] = max(self._closed_until[k], start)
        self._closed_until[0] = max(self._closed_until[0], end)

    def on_clock(self, now_ms: int) -> list[Bar]:
        """Close every bar whose end plus the grace has passed."""
        out: list[Bar] = []
        boundary = now_ms - self.grace_ms
        cur = self._open[0]
        if cur is not None and cur.open_time + self._tf_ms[0] <= boundary:
            self._close_finest(out)
        self._roll(boundary, out)
        return out

    def flush(self) -> list[Bar]:
        """Close every open bar (end of a replay)."""
        out: list[Bar] = []
        if self._open[0] is not None:
            self._close_finest(out)
        for k in range(1, len(self._tf_ms)):
            st = self._open[k]
            if st is not None:
                self._emit_close(k, st, out)
        return out

    # ---- reading --------------------------------------------------------------------------

    def current(self, timeframe: str) -> Bar | None:
        """The open bar of a timeframe as it stands now (the finest open bar folded in)."""
        k = self.timeframes.index(timeframe)
        st, fin = self._open[k], self._open[0]
        if k and fin is not None:
            key = fin.open_time - fin.open_time % self._tf_ms[k]
            if st is not None and st.open_time == key:
                st = st.copy()
                st.merge(fin)
            else:
                st = fin.copy()
                st.open_time = key
        return None if st is None else st.freeze(self.market, timeframe, closed=False)

    # ---- internals ------------------------------------------------------------------------

    def _close_finest(self, out: list[Bar]) -> None:
        cur = self._open[0]
        assert cur is not None  # noqa: S101 - callers check
        self._open[0] = None
        self._emit_close(0, cur, out)
        for k in range(1, len(self._tf_ms)):
            key = cur.open_time - cur.open_time % self._tf_ms[k]
            st = self._open[k]
            if st is not None and st.open_time != key:
                self._emit_close(k, st, out)
                st = None
            if st is None:
                st = self._open[k] = cur.copy()
                st.open_time = key
            else:
                st.merge(cur)

    def _roll(self, boundary: int, out: list[Bar]) -> None:
        """Mark every interval ending at or before ``boundary`` closed; close open coarse bars."""
        for k, ms in enumerate(self._tf_ms):
            edge = boundary - boundary % ms
            if edge > self._closed_until[k]:
                self._closed_until[k] = edge
            st = self._open[k]
            if k and st is not None and st.open_time + ms <= boundary:
                self._emit_close(k, st, out)

    def _emit_close(self, k: int, st: _State, out: list[Bar]) -> None:
        self._open[k] = None
        closed = self._closed[k]
        closed[st.open_time] = st
        if len(closed) > self.keep:
            del closed[next(iter(closed))]
        end = st.open_time + self._tf_ms[k]
        if end > self._closed_until[k]:
            self._closed_until[k] = end
        out.append(st.freeze(self.market, self.timeframes[k], closed=True))

    def _late(self, t: int, p: float, q: float, s: int, out: list[Bar]) -> None:
        """A trade older than the open finest bar: revise (or create) the bars it belongs to."""
        if t < self._closed_until[0] - self.keep * self._tf_ms[0]:
            self.late_dropped += 1  # beyond the revision horizon; the trade itself is stored
            return
        for k, ms in enumerate(self._tf_ms):
            key = t - t % ms
            st = self._open[k]
            if st is not None and st.open_time == key:
                st.add(t, p, q, s)
                continue
            st = self._closed[k].get(key)
            if st is not None:
                st.add(t, p, q, s)
                st.revision += 1
            elif key + ms <= self._closed_until[k]:
                st = _State(key, t, p)
                st.add(t, p, q, s)
                st.revision = 1
                self._closed[k][key] = st
            else:  # the interval is still open at this timeframe: a coarse bar starts early
                st = _State(key, t, p)
                st.add(t, p, q, s)
                self._open[k] = st
                continue
            out.append(st.freeze(self.market, self.timeframes[k], closed=True))
