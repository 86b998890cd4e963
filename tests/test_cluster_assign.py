"""Rendezvous hashing: stable across processes, even spread, minimal movement, and the plan
that turns intended owners and current leases into one instance's moves."""

from __future__ import annotations

from collections import Counter

from aetherion.cluster.assign import assign, owner_of, plan, weight

MARKETS = [f"m{i:04d}" for i in range(1000)]
FIVE = ["i1", "i2", "i3", "i4", "i5"]


def test_weight_is_stable_across_processes() -> None:
    # a fixed value: Python's hash() would change with PYTHONHASHSEED, blake2b does not
    assert weight("i1", "btcusdt") == 3822965692695550036
    assert weight("i1", "btcusdt") != weight("btcusdt", "i1")


def test_no_instances_no_owner() -> None:
    assert owner_of("btcusdt", []) is None
    assert assign(MARKETS, []) == {}


def test_order_of_instances_does_not_matter() -> None:
    assert assign(MARKETS, FIVE) == assign(MARKETS, reversed(FIVE))


def test_spread_is_even() -> None:
    counts = Counter(assign(MARKETS, FIVE).values())
    assert set(counts) == set(FIVE)
    assert all(150 <= n <= 250 for n in counts.values()), counts


def test_leaving_moves_only_the_leavers_markets() -> None:
    before = assign(MARKETS, FIVE)
    after = assign(MARKETS, [i for i in FIVE if i != "i3"])
    moved = {m for m in MARKETS if before[m] != after[m]}
    assert moved == {m for m in MARKETS if before[m] == "i3"}
    # and they spread over all the survivors rather than landing on one
    assert set(Counter(after[m] for m in moved)) == {"i1", "i2", "i4", "i5"}


def test_joining_takes_a_fair_share_from_everyone() -> None:
    before = assign(MARKETS, FIVE)
    after = assign(MARKETS, [*FIVE, "i6"])
    moved = [m for m in MARKETS if before[m] != after[m]]
    assert all(after[m] == "i6" for m in moved)
    assert 1000 / 6 * 0.7 <= len(moved) <= 1000 / 6 * 1.3
    assert set(before[m] for m in moved) == set(FIVE)


def test_plan_hands_markets_to_a_joiner_and_counts_me_as_live() -> None:
    markets = MARKETS[:60]
    # i1 was alone and took everything; i2 joins
    owners = dict.fromkeys(markets, "i1")
    p1 = plan(markets, ["i1", "i2"], "i1", owners)
    p2 = plan(markets, ["i1", "i2"], "i2", owners)
    intended = assign(markets, ["i1", "i2"])
    assert p1.acquire == ()
    assert set(p1.release) == {m for m in markets if intended[m] == "i2"}
    assert p2.acquire == p2.release == ()  # all held by i1 for now: nothing free to take
    # once i1 released them, i2 takes exactly those
    after = {m: o for m, o in owners.items() if m not in p1.release}
    assert plan(markets, ["i1", "i2"], "i2", after).acquire == p1.release
    # i1 missing from the member list it read (its own heartbeat not yet visible) changes
    # nothing for i1: it does not give away its markets
    assert plan(markets, ["i2"], "i1", owners) == p1


def test_plan_leaves_a_dead_owners_lease_alone() -> None:
    markets = MARKETS[:20]
    owners = dict.fromkeys(markets, "dead")
    p = plan(markets, ["i1"], "i1", owners)
    assert p.acquire == p.release == ()  # the lease must expire first
    assert plan(markets, ["i1"], "i1", {}).acquire == tuple(markets)
