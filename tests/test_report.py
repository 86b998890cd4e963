"""The replay report's arithmetic, checked by hand, and the picture."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from aetherion.report import performance, plot

DAY = 86_400_000


def rows(opens: list[float], positions: list[str], actions: list[str] | None = None
         ) -> list[dict[str, Any]]:
    return [{"open_time": i * DAY, "open": o, "close": o, "position": p, "regime": "bull",
             "action": (actions or ["HOLD"] * len(opens))[i], "confidence": 0.8}
            for i, (o, p) in enumerate(zip(opens, positions, strict=True))]


def test_hand_checked_case() -> None:
    # Decided long on bars 0 and 1, flat on 2: long from bar 1's open to bar 3's open.
    r = rows([100, 110, 99, 99, 108.9], ["long", "long", "flat", "short", "short"])
    p = performance(r, fee_bps=1, slippage_bps=2)  # 3 bps a unit traded
    s, h = p["strategy"], p["buy_and_hold"]
    # open-to-open returns: +10%, -10%, 0%, +10%; held 0, 1, 1, 0 (never on the signal's bar)
    # strategy: 0, -0.1 - 0.0003 (entry), 0, -0.0003 (exit)
    assert s["total_return"] == pytest.approx(0.8997 * 0.9997 - 1)
    assert s["max_drawdown"] == pytest.approx(1 - 0.8997 * 0.9997)
    assert s["round_trips"] == 1 and s["hit_rate"] == 0.0  # bought 110, sold 99
    assert s["exposure"] == pytest.approx(0.5)
    rets = [0.0, -0.1003, 0.0, -0.0003]
    mean = sum(rets) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in rets) / 3)
    assert p["bars_per_year"] == pytest.approx(365.25)
    assert s["annualized_volatility"] == pytest.approx(sd * math.sqrt(365.25))
    # buy and hold: entry cost once, then +10%, -10%, 0%, +10%
    assert h["total_return"] == pytest.approx(1.0997 * 0.9 * 1.1 - 1)
    assert h["max_drawdown"] == pytest.approx(0.1)


def test_reversal_pays_two_units_and_counts_a_trip() -> None:
    r = rows([100, 100, 100, 100], ["long", "short", "short", "short"])
    p = performance(r, fee_bps=5, slippage_bps=5)  # 10 bps a unit
    # held 0, long, short: entry 1 unit, reversal 2 units; prices flat
    assert p["strategy"]["total_return"] == pytest.approx(0.999 * 0.998 - 1)
    assert p["strategy"]["round_trips"] == 2 and p["strategy"]["hit_rate"] == 0.0


def test_plot_writes_a_png(tmp_path: Path) -> None:
    r = rows([100, 101, 99, 102], ["flat", "long", "long", "flat"],
             ["HOLD", "BUY", "HOLD", "SELL"])
    out = tmp_path / "p.png"
    plot(r, out, "test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
