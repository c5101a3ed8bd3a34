"""Who used the CPU during a run: the system under test, the load generator, or someone else.

The benchmark shares two cores with whatever else the machine runs; each run
records the CPU the machine spent outside the benchmark's own processes, so a
figure taken on a busy machine says so.
"""

from __future__ import annotations

import hashlib
import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def machine_seconds() -> float:
    """Busy CPU-seconds of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK


def process_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_PROBE = os.urandom(1 << 20)


def speed_probe() -> float:
    """How fast this machine computes right now: MB of SHA-256 per CPU-second.

    CPU time, not wall time, so being descheduled does not count; what it
    catches is a CPU that does less work per second, e.g. a host whose other
    tenants share its cores. Every process of a run slows down together then.
    """
    started = time.thread_time()
    for _ in range(8):
        hashlib.sha256(_PROBE).digest()
    return 8 / max(time.thread_time() - started, 1e-6)


def calibrate() -> float:
    return statistics.median(speed_probe() for _ in range(7))


@dataclass
class Sample:
    wall: float
    speed: float
    machine: float
    system: dict[int, float]
    others: dict[int, float]
    children: float
    own: float


class CpuMeter:
    """CPU of the system under test, of the benchmark's other processes, and of the rest of the machine."""

    def __init__(self, system: list[tuple[str, int]], other_pids: list[int], calibration: float | None = None) -> None:
        self.calibration = calibration
        self.names = dict((pid, name) for name, pid in system)
        self.system_pids = list(self.names)
        self.other_pids = [pid for pid in other_pids if pid not in self.names]

    def sample(self) -> Sample:
        return Sample(
            time.monotonic(),
            speed_probe(),
            machine_seconds(),
            {pid: process_seconds(pid) for pid in self.system_pids},
            {pid: process_seconds(pid) for pid in self.other_pids},
            _children_seconds(),
            _self_seconds(),
        )

    def report(self, before: Sample, after: Sample, messages: int) -> dict[str, object]:
        wall = after.wall - before.wall
        system = sum(after.system.get(pid, 0.0) - seconds for pid, seconds in before.system.items())
        others = sum(after.others.get(pid, 0.0) - seconds for pid, seconds in before.others.items())
        # wrk (reaped, so in RUSAGE_CHILDREN) and the harness itself (request generation).
        harness = (after.children - before.children) + (after.own - before.own)
        machine = after.machine - before.machine
        foreign = max(0.0, machine - system - others - harness)
        per_process: dict[str, int] = {}
        if messages:
            for pid, seconds in before.system.items():
                name = self.names[pid]
                used = round((after.system.get(pid, seconds) - seconds) * 1e6 / messages)
                per_process[name] = per_process.get(name, 0) + used
        return {
            "system_cpu_pct": round(100 * system / wall, 1),
            "harness_cpu_pct": round(100 * harness / wall, 1),
            "foreign_cpu_pct": round(100 * foreign / wall, 1),
            "machine_busy_pct": round(100 * machine / (wall * CORES), 1),
            "system_cpu_us_per_msg": round(system * 1e6 / messages) if messages else None,
            "us_per_msg_by_process": per_process,
            "others_cpu_pct": round(100 * others / wall, 1),
            # The machine's speed around the run, against the start of the benchmark (1.0).
            "cpu_speed": round(min(before.speed, after.speed) / self.calibration, 2) if self.calibration else None,
        }
