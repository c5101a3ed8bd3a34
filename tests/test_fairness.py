"""The share of a worker's slots each account may take (appserver/fairness.py)."""

from __future__ import annotations

from collections import Counter

from appserver.fairness import admissible, rooms


def test_alone_an_account_may_use_every_slot():
    assert admissible(["a"], Counter(a=49), 50) == ["a"]


def test_an_account_borrows_only_what_leaves_the_others_their_share():
    # Two accounts of 50 slots: a share of 12 each; A may hold 38 while B holds nothing.
    assert admissible(["a", "b"], Counter(a=37), 50) == ["a", "b"]
    assert admissible(["a", "b"], Counter(a=38), 50) == ["b"]
    # B using its share frees nothing for A; every slot taken, nobody starts.
    assert admissible(["a", "b"], Counter(a=38, b=11), 50) == ["b"]
    assert admissible(["a", "b"], Counter(a=38, b=12), 50) == []
    # Both busy past their shares: each may take a freed slot, in kombu's turns.
    assert admissible(["a", "b"], Counter(a=25, b=24), 50) == ["a", "b"]


def test_three_accounts_keep_a_share_each_for_the_idle_ones():
    assert admissible(["a", "b", "c"], Counter(a=33), 50) == ["a", "b", "c"]
    assert admissible(["a", "b", "c"], Counter(a=34), 50) == ["b", "c"]
    # The 8 slots left are C's share: B, at its own, waits like A.
    assert admissible(["a", "b", "c"], Counter(a=34, b=8), 50) == ["c"]


def test_more_accounts_than_half_the_slots_are_served_in_turns_only():
    queues = [f"q{n}" for n in range(30)]
    assert admissible(queues, Counter(q0=49), 50) == queues


def test_a_pop_takes_no_more_than_each_account_has_room_for():
    # What a worker may take at once (appserver/batch_pop.py): alone, every free slot.
    assert rooms(["a"], Counter(a=42), 50) == {"a": 8}
    # Two accounts of 50 slots, a share of 12 each: A holding 30 may take 8 more, B (holding 1) 19.
    assert rooms(["a", "b"], Counter(a=30, b=1), 50) == {"a": 8, "b": 19}
    assert admissible(["a", "b"], Counter(a=38), 50) == ["b"] and rooms(["a", "b"], Counter(a=38), 50)["b"] == 12
