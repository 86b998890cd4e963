"""Candle engine: alignment, closing rules, late trades, and coarse = aggregate of fine."""

from __future__ import annotations

import random
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from aetherion.domain import BUY, SELL, TIMEFRAME_MS, UNKNOWN_SIDE, Bar, Tick
from aetherion.features.candles import CandleEngine

T0 = 1_732_442_400_000  # 2024-11-24 10:00:00 UTC, a whole hour


def tick(ts: int, price: float, size: float = 1.0, side: int = BUY, tid: int = 0) -> Tick:
    return Tick("m", ts, price, size, side, str(tid))


def test_bars_align_to_utc_and_close_on_a_later_trade() -> None:
    eng = CandleEngine("m", ["1s", "5s"])
    out = eng.on_ticks([tick(T0 + 200, 10.0), tick(T0 + 700, 12.0, side=SELL), tick(T0 + 900, 9.0)])
    assert out == []
    out = eng.on_ticks([tick(T0 + 1_100, 11.0)])
    assert [(b.timeframe, b.open_time) for b in out] == [("1s", T0)]
    b = out[0]
    assert (b.open, b.high, b.low, b.close) == (10.0, 12.0, 9.0, 9.0)
    assert (b.volume, b.buy_volume, b.sell_volume, b.trade_count) == (3.0, 2.0, 1.0, 3)
    assert b.closed and b.revision == 0 and b.close_time == T0 + 1_000


def test_interval_without_trades_makes_no_bar() -> None:
    eng = CandleEngine("m", ["1s", "5s"])
    eng.on_ticks([tick(T0 + 100, 1.0)])
    out = eng.on_ticks([tick(T0 + 7_300, 2.0)])  # 1s bars 1..6 and the 5s bar at 5 saw nothing
    assert [(b.timeframe, b.open_time) for b in out] == [("1s", T0), ("5s", T0)]
    out = eng.flush()
    assert [(b.timeframe, b.open_time) for b in out] == [("1s", T0 + 7_000), ("5s", T0 + 5_000)]


def test_clock_closes_quiet_bars_after_the_grace() -> None:
    eng = CandleEngine("m", ["1s", "1m"], grace_ms=300)
    eng.on_ticks([tick(T0 + 500, 5.0)])
    assert eng.on_clock(T0 + 1_200) == []  # within the grace: still open
    out = eng.on_clock(T0 + 1_300)
    assert [(b.timeframe, b.open_time) for b in out] == [("1s", T0)]
    out = eng.on_clock(T0 + 60_300)
    assert [(b.timeframe, b.open_time) for b in out] == [("1m", T0)]


def test_trade_within_grace_joins_its_bar_before_it_closes() -> None:
    eng = CandleEngine("m", ["1s"], grace_ms=300)
    eng.on_ticks([tick(T0 + 500, 5.0)])
    eng.on_clock(T0 + 1_100)
    eng.on_ticks([tick(T0 + 990, 6.0)])  # exchange time inside the bar, arrived in the grace
    (b,) = eng.on_clock(T0 + 1_300)
    assert (b.close, b.trade_count, b.revision) == (6.0, 2, 0)


def test_late_trade_revises_the_closed_bar_and_its_coarser_bars() -> None:
    eng = CandleEngine("m", ["1s", "5s"], grace_ms=0)
    eng.on_ticks([tick(T0 + 100, 10.0), tick(T0 + 5_100, 11.0)])  # 1s@0 and 5s@0 close
    out = eng.on_ticks([tick(T0 + 50, 20.0, size=2.0)])  # late, earliest in the 1s bar: new open
    assert [(b.timeframe, b.open_time, b.revision) for b in out] == [("1s", T0, 1), ("5s", T0, 1)]
    b1 = out[0]
    assert (b1.open, b1.high, b1.close, b1.volume, b1.trade_count) == (20.0, 20.0, 10.0, 3.0, 2)
    out = eng.on_ticks([tick(T0 + 150, 30.0)])  # latest in the bar: becomes the close
    assert [(b.revision, b.close) for b in out] == [(2, 30.0), (2, 30.0)]


def test_late_trade_in_an_empty_closed_interval_creates_a_revised_bar() -> None:
    eng = CandleEngine("m", ["1s", "1m"], grace_ms=0)
    eng.on_ticks([tick(T0 + 100, 10.0), tick(T0 + 3_100, 11.0)])
    out = eng.on_ticks([tick(T0 + 1_500, 12.0)])  # 1s@1 had no trade and is closed
    assert [(b.timeframe, b.open_time, b.revision) for b in out] == [("1s", T0 + 1_000, 1)]
    # the open 1m bar took the trade in directly: it appears when the minute closes
    out = eng.flush()
    one_min = [b for b in out if b.timeframe == "1m"][0]
    assert (one_min.volume, one_min.trade_count, one_min.high) == (3.0, 3, 12.0)


def test_unknown_sides_mark_the_bar_unsided() -> None:
    eng = CandleEngine("m", ["1s"])
    eng.on_ticks([tick(T0, 1.0, side=UNKNOWN_SIDE), tick(T0 + 10, 1.0)])
    (b,) = eng.flush()
    assert not b.sided and b.buy_volume == 1.0 and b.volume == 2.0


def test_current_folds_the_open_finest_bar_into_the_coarse_view() -> None:
    eng = CandleEngine("m", ["1s", "1m"])
    eng.on_ticks([tick(T0 + 100, 10.0), tick(T0 + 1_100, 12.0), tick(T0 + 1_200, 8.0)])
    cur = eng.current("1m")
    assert cur is not None and not cur.closed
    assert (cur.open, cur.high, cur.low, cur.close, cur.trade_count) == (10.0, 12.0, 8.0, 8.0, 3)


def test_timeframes_must_nest() -> None:
    try:
        CandleEngine("m", [])
    except ValueError as e:
        assert "timeframe" in str(e)
    else:  # pragma: no cover
        raise AssertionError("empty timeframes accepted")


def _aggregate(ticks: list[Tick], tf: str) -> dict[int, tuple[float, ...]]:
    """Reference bars straight from the trades, ordered by (ts, arrival)."""
    ms = TIMEFRAME_MS[tf]
    groups: dict[int, list[tuple[int, int, Tick]]] = defaultdict(list)
    for i, t in enumerate(ticks):
        groups[t.ts - t.ts % ms].append((t.ts, i, t))
    ref = {}
    for key, rows in groups.items():
        by_time = sorted(rows, key=lambda r: (r[0], r[1]))
        first = min(rows, key=lambda r: (r[0], r[1]))[2]
        last = max(rows, key=lambda r: (r[0], r[1]))[2]
        prices = [r[2].price for r in by_time]
        vol = sum(r[2].size for r in rows)
        buy = sum(r[2].size for r in rows if r[2].side == BUY)
        ref[key] = (first.price, max(prices), min(prices), last.price, round(vol, 6),
                    round(buy, 6), len(rows))
    return ref


def _final(bars: list[Bar], tf: str) -> dict[int, tuple[float, ...]]:
    latest: dict[int, Bar] = {}
    for b in bars:
        if b.timeframe == tf and (b.open_time not in latest
                                  or b.revision >= latest[b.open_time].revision):
            latest[b.open_time] = b
    return {k: (b.open, b.high, b.low, b.close, round(b.volume, 6), round(b.buy_volume, 6),
                b.trade_count) for k, b in latest.items()}


trade_lists = st.lists(
    st.tuples(
        st.integers(0, 400_000),  # ms after T0
        st.integers(1, 10_000),  # price in cents
        st.integers(1, 50),
        st.sampled_from([BUY, SELL]),
    ),
    min_size=1, max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(trade_lists, st.integers(1, 40), st.booleans())
def test_every_timeframe_equals_the_aggregation_of_its_trades(
    rows: list[tuple[int, int, int, int]], batch: int, shuffle_some: bool
) -> None:
    """Late trades included: after revisions each bar equals a direct aggregation."""
    ticks = [tick(T0 + dt, p / 100, float(q), s, i) for i, (dt, p, q, s) in enumerate(rows)]
    if not shuffle_some:
        ticks.sort(key=lambda t: t.ts)
    tfs = ["1s", "5s", "1m", "5m"]
    eng = CandleEngine("m", tfs, grace_ms=0)
    bars: list[Bar] = []
    for i in range(0, len(ticks), batch):
        bars += eng.on_ticks(ticks[i:i + batch])
    bars += eng.flush()
    assert eng.late_dropped == 0
    for tf in tfs:
        assert _final(bars, tf) == _aggregate(ticks, tf), tf
    # each (timeframe, open_time) is closed once with revision 0 unless it first appeared late
    firsts = [(b.timeframe, b.open_time) for b in bars if b.revision == 0]
    assert len(firsts) == len(set(firsts))


@settings(max_examples=60, deadline=None)
@given(trade_lists)
def test_coarse_bars_equal_the_fold_of_fine_bars(rows: list[tuple[int, int, int, int]]) -> None:
    ticks = sorted((tick(T0 + dt, p / 100, float(q), s, i) for i, (dt, p, q, s)
                    in enumerate(rows)), key=lambda t: t.ts)
    eng = CandleEngine("m", ["1s", "1m"])
    bars = eng.on_ticks(ticks) + eng.flush()
    fine = [b for b in bars if b.timeframe == "1s"]
    for c in (b for b in bars if b.timeframe == "1m"):
        parts = [b for b in fine if c.open_time <= b.open_time < c.close_time]
        assert c.open == parts[0].open and c.close == parts[-1].close
        assert c.high == max(b.high for b in parts) and c.low == min(b.low for b in parts)
        assert c.trade_count == sum(b.trade_count for b in parts)
        assert abs(c.volume - sum(b.volume for b in parts)) < 1e-9


def test_on_bars_folds_candles_like_trades() -> None:
    """Candle input: closed base bars give the same coarse bars as the trades that made them."""
    rng = random.Random(4)
    ticks = [Tick("m", 1_000 + i * 700 + rng.randrange(500), 100 + rng.random(), 1.0,
                  BUY if rng.random() < 0.5 else SELL, str(i)) for i in range(600)]
    by_trades = CandleEngine("m", ["1s", "5s", "1m"])
    ref = by_trades.on_ticks(ticks) + by_trades.flush()
    base = [b for b in ref if b.timeframe == "1s"]
    by_bars = CandleEngine("m", ["1s", "5s", "1m"])
    got = by_bars.on_bars(base) + by_bars.flush()
    for tf in ("1s", "5s", "1m"):
        assert [b for b in got if b.timeframe == tf] == [b for b in ref if b.timeframe == tf]


def test_seed_makes_the_first_live_coarse_bar_whole() -> None:
    """After a restart, history 1s bars of the current 5s interval join the live 5s bar."""
    ticks = [Tick("m", 10_000 + i * 100, 100.0 + (i % 13), 1.0 + i % 3, BUY if i % 2 else SELL,
                  str(i)) for i in range(200)]
    whole = CandleEngine("m", ["1s", "5s"])
    ref = [b for b in whole.on_ticks(ticks) + whole.flush() if b.timeframe == "5s"]
    cut = 37  # the process "restarts" 3.7 s into the 5 s interval starting at 10 s... (13.7 s)
    before = CandleEngine("m", ["1s", "5s"])
    history = [b for b in before.on_ticks(ticks[:cut]) + before.flush() if b.timeframe == "1s"]
    history = [b for b in history if b.open_time < 13_000]  # closed 1s bars up to the restart
    live = CandleEngine("m", ["1s", "5s"])
    live.seed(history)
    got = [b for b in live.on_ticks([t for t in ticks if t.ts >= 13_000]) + live.flush()
           if b.timeframe == "5s"]
    assert got == ref


@settings(max_examples=150, deadline=None)
@given(trade_lists, st.integers(1, 400), st.booleans(), st.booleans())
def test_contract_replay_and_live_candle_paths_are_bit_equal(
    rows: list[tuple[int, int, int, int]], batch: int, shuffle_some: bool, unsided: bool
) -> None:
    """THE CONTRACT between replay and live: the replay's column chunks (``on_trades``, folded a
    bar at a time when in order, trade by trade when not) emit exactly the bars the live path
    (``on_ticks``) emits, sums included, to the bit. A replay is trusted because of this test."""
    ticks = [tick(T0 + dt, p / 100 + 0.001 * i, q / 7, UNKNOWN_SIDE if unsided and i % 9 == 0
                  else s, i) for i, (dt, p, q, s) in enumerate(rows)]
    if not shuffle_some:
        ticks.sort(key=lambda t: t.ts)
    tfs = ["1s", "5s", "1m"]
    by_tick, by_column = CandleEngine("m", tfs, grace_ms=0), CandleEngine("m", tfs, grace_ms=0)
    want: list[Bar] = []
    got: list[Bar] = []
    for i in range(0, len(ticks), batch):
        part = ticks[i:i + batch]
        want += by_tick.on_ticks(part)
        got += by_column.on_trades([t.ts for t in part], [t.price for t in part],
                                   [t.size for t in part], [t.side for t in part])
    assert got + by_column.flush() == want + by_tick.flush()


def test_contract_holds_on_a_real_day_of_spy_trades() -> None:
    """A real day of SPY trades in 50,000-trade chunks; sizes in thirds so that volumes are
    inexact in binary and the order of the sums shows."""
    from datadir import DATA

    from aetherion.replay import load

    df = load(DATA / "us_equities" / "spy_20131011_trade.zip").frame
    ts, price, size, side = (df[c].to_numpy() for c in ("ts", "price", "size", "side"))
    size = size / 3
    tfs = ["1m", "15m", "1h"]
    by_column, by_tick = CandleEngine("spy", tfs), CandleEngine("spy", tfs)
    got: list[Bar] = []
    for i in range(0, len(ts), 50_000):
        got += by_column.on_trades(ts[i:i + 50_000], price[i:i + 50_000], size[i:i + 50_000],
                                   side[i:i + 50_000])
    ticks = [Tick("spy", t, p, q, s, str(i)) for i, (t, p, q, s)
             in enumerate(zip(ts.tolist(), price.tolist(), size.tolist(), side.tolist(),
                                 strict=True))]
    want = by_tick.on_ticks(ticks)
    assert len(got) > 400 and got + by_column.flush() == want + by_tick.flush()
