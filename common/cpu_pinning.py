"""Each relay and each worker of the threads pool keeps to one core, the processes taken in turn.

Measured on two cores (bench, trivial bot, 128 connections, the same appliance
pinned and not, alternated six times): pinned, a message costs 8% less CPU and
the appliance answered 8% more (2,718 against 2,946 µs a message, 699 against
645 msg/s). Since workers take several messages a pop, alternated three times:
5% less CPU (1,340–1,381 against 1,383–1,493 µs), the same throughput
(1,288–1,301 against 1,261–1,364 msg/s). A worker's threads hand its GIL to each other dozens of times a
message, and a relay wakes for every Redis reply: on one core those hand-offs
stay in its cache and wake nothing across cores. A prefork worker is left
alone: its children inherit the mask, and a CPU-bound bot wants every core.
"""

from __future__ import annotations

import os


def pin(index: int) -> int | None:
    """Keep every thread of this process on the index-th of the cores it may use; the core, or None
    when there is only one."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    core = cores[index % len(cores)]
    # sched_setaffinity(0) moves only the calling thread; threads already started keep their mask.
    for thread in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread), {core})
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
    return core
