"""The relay's collection schedule: the young generations on a timer, a full collection only when few
deliveries are held (or once in a long while)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from relay import collector


@pytest.fixture
def fast_schedule(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The middle generation every other turn, a full collection due after every middle one.
    monkeypatch.setattr(collector, "MIDDLE_EVERY", 2)
    monkeypatch.setattr(collector, "FULL_AFTER", 1)
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def collections_while(held: int, until: dict[int, int], timeout: float = 10.0) -> dict[int, int]:
    """Run the schedule with `held` deliveries held until each generation was collected `until` times (or the
    timeout); the collections of each generation meanwhile."""
    counted = {0: 0, 1: 0, 2: 0}

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            counted[info["generation"]] += 1

    async def run() -> None:
        schedule = collector.collect_on_a_schedule(lambda: held)
        gc.callbacks.append(count)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline and any(counted[g] < n for g, n in until.items()):
                await asyncio.sleep(0.01)
        finally:
            gc.callbacks.remove(count)
            schedule.stop()

    asyncio.run(run())
    return counted


def test_young_generations_are_collected_on_the_clock_and_a_full_collection_waits_while_many_are_held(
    fast_schedule: None,
) -> None:
    busy = collections_while(held=collector.QUIET, until={0: 10, 1: 10})
    assert busy[0] >= 10 and busy[1] >= 10
    # CPython would have run several full collections by now; none while a hundred deliveries wait on the loop.
    assert busy[2] == 0
    assert gc.get_threshold()[2] == 2**31 - 1  # and it starts none by itself


def test_a_full_collection_runs_once_few_deliveries_are_held(fast_schedule: None) -> None:
    quiet = collections_while(held=collector.QUIET - 1, until={2: 2})
    assert quiet[2] >= 2


def test_a_full_collection_runs_after_the_longest_wait_however_busy(
    fast_schedule: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(collector, "LONGEST_WAIT_S", 0.2)
    busy = collections_while(held=10 * collector.QUIET, until={2: 1})
    assert busy[2] >= 1
