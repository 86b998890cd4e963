"""The local L2 book against the real recording: Binance's U/u rules, stale snapshots, gaps."""

from __future__ import annotations

from typing import Any

import pytest
from fakes.binance_server import Recording, load_recording

from aetherion.ingest.orderbook import OrderBook


@pytest.fixture(scope="module")
def rec() -> Recording:
    return load_recording("btcusdt", 3000)


def levels(rows: list[list[str]]) -> list[tuple[float, float]]:
    return [(float(p), float(q)) for p, q in rows]


def diffs(rec: Recording) -> list[dict[str, Any]]:
    return [d for s, d in rec.messages if "@depth" in s]


def reference(rec: Recording, upto: int) -> tuple[dict[float, float], dict[float, float]]:
    """The book by brute force: snapshot, then every diff up to ``upto`` applied in order."""
    bids = dict(levels(rec.snapshot["bids"]))
    asks = dict(levels(rec.snapshot["asks"]))
    for d in diffs(rec)[:upto]:
        for side, rows in ((bids, d["b"]), (asks, d["a"])):
            for p, q in levels(rows):
                if q:
                    side[p] = q
                else:
                    side.pop(p, None)
    return bids, asks


def test_snapshot_then_diffs_match_the_reference(rec: Recording) -> None:
    ds = diffs(rec)
    book = OrderBook("btcusdt")
    for d in ds[:5]:  # diffs arrive before the snapshot: buffered
        assert book.on_diff(d["U"], d["u"], levels(d["b"]), levels(d["a"]))
    assert book.state == "resyncing" and book.top(5, 0).bids == ()
    snap = rec.snapshot
    assert book.on_snapshot(snap["lastUpdateId"], levels(snap["bids"]), levels(snap["asks"]))
    for d in ds[5:]:
        assert book.on_diff(d["U"], d["u"], levels(d["b"]), levels(d["a"]))
    bids, asks = reference(rec, len(ds))
    assert book.bids == {p: q for p, q in bids.items() if q}
    assert book.asks == {p: q for p, q in asks.items() if q}
    top = book.top(10, 1)
    assert top.state == "live" and top.sequence == ds[-1]["u"]
    assert [p for p, _ in top.bids] == sorted(bids, reverse=True)[:10]
    assert top.bids[0][0] < top.asks[0][0]


def test_stale_snapshot_is_refused(rec: Recording) -> None:
    ds = diffs(rec)
    book = OrderBook("btcusdt")
    for d in ds[10:20]:
        book.on_diff(d["U"], d["u"], levels(d["b"]), levels(d["a"]))
    snap = rec.snapshot  # older than diff 10: the diffs in between are missing
    assert not book.on_snapshot(snap["lastUpdateId"], levels(snap["bids"]),
                                levels(snap["asks"]))
    assert book.state == "resyncing"


def test_sequence_gap_resets_and_recovers(rec: Recording) -> None:
    ds = diffs(rec)
    book = OrderBook("btcusdt")
    snap = rec.snapshot
    book.on_snapshot(snap["lastUpdateId"], levels(snap["bids"]), levels(snap["asks"]))
    for d in ds[:100]:
        assert book.on_diff(d["U"], d["u"], levels(d["b"]), levels(d["a"]))
    gap = ds[101]  # ds[100] withheld
    assert not book.on_diff(gap["U"], gap["u"], levels(gap["b"]), levels(gap["a"]))
    assert book.state == "resyncing" and book.gaps == 1 and not book.bids
    for d in ds[102:200]:
        book.on_diff(d["U"], d["u"], levels(d["b"]), levels(d["a"]))
    # a fresh snapshot taken after diff 150 (the exchange's book at that point)
    bids, asks = reference(rec, 151)
    assert book.on_snapshot(ds[150]["u"], bids.items(), asks.items())
    ref_bids, ref_asks = reference(rec, 200)
    assert book.bids == ref_bids and book.asks == ref_asks
    assert book.update_id == ds[199]["u"]
