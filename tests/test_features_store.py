"""Engine rows through both market stores: every number, null and regime input comes back
bit-exact, newest first, and a rewrite of the same bar keeps the first row."""

from __future__ import annotations

import csv
import io
import zipfile

from datadir import DATA

from aetherion.domain import Bar
from aetherion.features import MOMENTUM, REGIME_INPUTS, FeatureEngine
from aetherion.storage.market import MarketStore

SPY = DATA / "us_equities" / "daily_spy.zip"


def spy_bars(n: int) -> list[Bar]:
    with zipfile.ZipFile(SPY) as z:
        rows = list(csv.reader(io.TextIOWrapper(z.open("spy.csv"))))[:n]
    out = []
    for i, r in enumerate(rows):
        o, h, lo, c = (float(x) / 10_000 for x in r[1:5])
        vol = float(r[5])
        out.append(Bar("spy", "1d", i * 86_400_000, o, h, lo, c, vol, vol * 0.55, vol * 0.45,
                       100, True, sided=i % 50 < 40))  # every 50 bars, 10 without sides
    return out


async def test_engine_rows_round_trip_exactly(store: MarketStore) -> None:
    eng = FeatureEngine("spy", "1d")
    rows = [eng.on_bar(b) for b in spy_bars(200)]
    assert rows[-1].extra[MOMENTUM] is not None and rows[0].atr is None
    assert any(r.volume_delta is None for r in rows) and any(r.volume_delta for r in rows)
    for i in range(0, len(rows), 64):  # as the buffered writer sends them: in batches
        await store.write_features(rows[i:i + 64])
    await store.write_features([eng.on_bar(b) for b in spy_bars(3)])  # same bars again: ignored
    got = await store.features("spy", "1d", 1000)
    assert got == rows[::-1]
    assert all(set(f.extra) == set(REGIME_INPUTS) for f in got)
    window = await store.features("spy", "1d", 5, since=10 * 86_400_000, until=20 * 86_400_000)
    assert [f.open_time // 86_400_000 for f in window] == [20, 19, 18, 17, 16]
