"""``/api/decision/performance/{market}``'s arithmetic: the position, its entry and open return,
and the report's books (the endpoint itself runs live in ``test_dashboard.py``)."""

from __future__ import annotations

from typing import Any

import pytest

from aetherion.api.performance import _position
from aetherion.report import performance


def rows(opens: list[float], exposures: list[float], step: int = 1000) -> list[dict[str, Any]]:
    """Bars of ``step`` ms that close at the next bar's open, the last one 1 % above its open."""
    closes = [*opens[1:], opens[-1] * 1.01]
    return [{"open_time": i * step, "open": o, "close": c, "exposure": e}
            for i, (o, c, e) in enumerate(zip(opens, closes, exposures, strict=True))]


def test_flat_and_too_few_bars() -> None:
    assert _position([])["side"] == "flat"
    one = _position(rows([100.0], [1.0]))
    assert one["side"] == "flat" and one["decided"] == 1.0 and one["entry_price"] is None
    assert _position(rows([100.0, 101.0, 102.0], [0.0, 0.0, 1.0])) == {
        "side": "flat", "held": 0.0, "decided": 1.0, "entry_time": None, "entry_price": None,
        "open_return": None}


def test_entry_is_the_fill_after_the_decision_and_open_return_marks_the_last_close() -> None:
    # decided long on bar 1's close: filled at bar 2's open (102), held since
    got = _position(rows([100.0, 101.0, 102.0, 104.0], [0.0, 1.0, 1.0, 1.0]))
    assert got["side"] == "long" and got["held"] == 1.0
    assert (got["entry_time"], got["entry_price"]) == (2000, 102.0)
    assert got["open_return"] == pytest.approx(104.0 * 1.01 / 102.0 - 1)


def test_a_size_change_is_the_same_trip_and_a_reversal_a_new_one() -> None:
    opens = [100.0, 100.0, 110.0, 121.0, 121.0]
    half = _position(rows(opens, [-1.0, -1.0, -0.5, -0.5, 1.0]))
    # short since bar 1's open (decided on bar 0), halved at bar 3's open; long comes next open
    assert (half["side"], half["held"], half["decided"]) == ("short", -0.5, 1.0)
    assert (half["entry_time"], half["entry_price"]) == (1000, 100.0)
    expected = (1 - 1.0 * 0.1) * (1 - 1.0 * 0.1) * (1 - 0.5 * 0.0) * (1 - 0.5 * 0.01) - 1
    assert half["open_return"] == pytest.approx(expected)
    flipped = _position(rows(opens, [-1.0, -1.0, 1.0, 1.0, 1.0]))
    assert (flipped["entry_time"], flipped["entry_price"]) == (3000, 121.0)


def test_a_gain_over_seconds_has_no_annualised_growth_and_no_overflow() -> None:
    """+10 % a second: the report's books over seconds of bars are the same returns as over
    days; the growth a year is not given (annualising seconds says nothing, and overflows)."""
    r = rows([100.0, 110.0, 121.0, 133.1], [1.0, 1.0, 1.0, 1.0])
    got = performance(r, 1.0, 2.0)
    long_span = performance(rows([100.0, 110.0, 121.0, 133.1], [1.0] * 4, step=7 * 86_400_000),
                            1.0, 2.0)
    for book in ("decisions", "buy_and_hold", "ma_filter"):
        for key in ("total_return", "max_drawdown", "time_in_market"):
            assert got[book][key] == pytest.approx(long_span[book][key]), (book, key)
        assert got[book]["cagr"] is None and long_span[book]["cagr"] is not None
