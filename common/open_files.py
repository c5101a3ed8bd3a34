"""Room for thousands of open connections in one process.

A conversation held open costs a relay a socket, and an async handler
awaiting a model's answer costs its worker one or more; the soft limit a
process starts with is often 1024 (systemd's and supervisord's default),
far below what the appliance is sized for. The hard limit is the
administrator's word and stays as it is.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("wxrelay")

WANTED = 65536


def raise_limit(wanted: int = WANTED) -> int:
    """Raise this process's soft limit on open files towards `wanted` (no further than the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < 4096:
        log.warning("only %d open files allowed (hard limit): a few thousand conversations will not fit", soft)
    return soft
