"""The relay's garbage collection, paced by the clock and by the deliveries it holds.

CPython starts a young collection when allocations outnumber deallocations
by 700, and every object freed counts as a deallocation, old or young. A
relay holding a thousand deliveries frees the old ones as fast as it makes
new ones, so the count hardly moves while the youngest generation grows:
measured at 100 slow msg/s on two relays, a young collection then walked
20,000 to 55,000 objects (and found no garbage among them), stalling the
IOLoop 20 to 70 ms each time, and the middle generation, collected once in
ten, as much again. Collected on a timer instead, the youngest every
YOUNG_EVERY_MS and the middle one every MIDDLE_EVERY-th time, each holds what
a few dozen (hundred) milliseconds left alive: a walk of a millisecond or two.

A full collection walks every delivery held: some 85 objects each, 44 ms of
CPU for a thousand (measured). What it reclaims is garbage in cycles, and a relay makes almost
none (those collections found 0 to 30 objects a time), so it waits for a
quiet moment, fewer than QUIET deliveries held, as often as CPython would
start one; failing that, it runs once in LONGEST_WAIT_S all the same.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from tornado.ioloop import PeriodicCallback

YOUNG_EVERY_MS = 20
MIDDLE_EVERY = 10
# Deliveries held: under this many, a full collection is a few milliseconds.
QUIET = 100
LONGEST_WAIT_S = 600.0
# Middle-generation collections between two full ones at the most (CPython's default threshold).
FULL_AFTER = 10


def collect_on_a_schedule(held: Callable[[], int]) -> PeriodicCallback:
    """Take over collection from CPython's allocation counts; `held` tells how many deliveries are held."""
    # CPython still collects the young generations when allocations run ahead between two turns of
    # the timer; a full collection it never starts by itself.
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 2**31 - 1)
    turns = 0
    last_full = time.monotonic()

    def collect() -> None:
        nonlocal turns, last_full
        turns += 1
        if turns % MIDDLE_EVERY:
            gc.collect(0)
            return
        gc.collect(1)
        due = gc.get_count()[2] >= FULL_AFTER
        if (due and held() < QUIET) or time.monotonic() - last_full > LONGEST_WAIT_S:
            gc.collect(2)
            last_full = time.monotonic()

    callback = PeriodicCallback(collect, YOUNG_EVERY_MS)
    callback.start()
    return callback
