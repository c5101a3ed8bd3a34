"""Relays and threads-pool workers keep to one core each, taken in turn; workers take second place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.services import RelayProcess, Worker

CORES = sorted(os.sched_getaffinity(0))
FIRST_RELAY_PORT = 8001  # WXRELAY_RELAY_PORT's default: relay n listens on it + n

pytestmark = pytest.mark.skipif(len(CORES) < 2, reason="pinning needs two cores")


def masks(pid: int) -> set[str]:
    """The CPU mask of each of the process's threads."""
    found = set()
    for thread in Path(f"/proc/{pid}/task").iterdir():
        for line in (thread / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found.add(line.split(":", 1)[1].strip())
    return found


def niceness(pid: int) -> int:
    # /proc/PID/stat: the 19th field, after the command in parentheses.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_each_relay_and_worker_keeps_to_one_core_and_workers_yield_to_relays(relays, worker):
    for relay in relays:
        assert masks(relay.pid) == {str(CORES[(relay.port - FIRST_RELAY_PORT) % len(CORES)])}, relay.port
        assert relay.log().count("keeps to core") == 1
    # The session's worker is worker1: the core after relay 1's.
    assert masks(worker.pid) == {str(CORES[2 % len(CORES)])}
    assert niceness(worker.pid) == niceness(os.getpid()) + 5
    assert all(niceness(relay.pid) == niceness(os.getpid()) for relay in relays)


def test_pinning_off_leaves_the_cores_to_the_kernel(log_dir, stack_env, redis_server):
    env = {**stack_env, "WXRELAY_CPU_PINNING": "false"}
    ours = masks(os.getpid())
    relay = RelayProcess(log_dir, env)
    unpinned = Worker(log_dir, env, "unpinned0", redis_server)
    try:
        assert masks(relay.pid) == ours and masks(unpinned.pid) == ours
        assert "keeps to core" not in relay.log() + unpinned.log()
    finally:
        unpinned.stop()
        relay.stop()
