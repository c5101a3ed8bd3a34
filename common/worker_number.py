"""Which of a host's workers a process is: the number its Celery node name ends with.

supervisor starts a group's workers as NAME0@host, NAME1@host, ... (deploy/supervisor/wxrelay.conf.j2, `-n`).
Worker n keeps to the core after relay n's, and serves /metrics on WXRELAY_WORKER_METRICS_PORT + n.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"(\d+)@")


def worker_number(nodename: str) -> int | None:
    """worker0@host → 0; worker-r10@host (the group worker-r1's process 0) → 10; None for a name without one."""
    found = _NUMBER.search(nodename)
    return int(found.group(1)) if found else None


def metrics_port(first: int, nodename: str) -> int:
    """Where a worker serves /metrics: `first` + its number, or 0 (nowhere) when `first` is 0.

    A name without a number (`celery -A appserver worker` started by hand) counts as worker 0: a second
    such worker on the host finds the port taken, and says so."""
    if not first:
        return 0
    return first + (worker_number(nodename) or 0)
