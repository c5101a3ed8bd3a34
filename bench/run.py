"""The benchmark run: start the systems, run the scenarios side by side, collect every figure."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench import callbacks, cpu, loadgen, slow, slow_async, sustained
from bench.cpu import CpuMeter
from bench.procs import memory_report
from bench.systems import (
    ApplianceBase,
    ApplianceRunner,
    Baseline,
    DirectAppliance,
    System,
    baselines_for,
    describe,
)
from common.settings import SETTINGS
from simulator.api import FakeWeChatAPI

FIXED_CONNECTIONS = 16
WARMUP_CONNECTIONS = 16
SETTLE_TIMEOUT = 20.0
BUSY_WARNING = 15.0


def machine_busy(seconds: float) -> float:
    """How busy the machine's cores are (percent of all of them), over `seconds`."""
    before = cpu.machine_seconds()
    time.sleep(seconds)
    return round(100 * (cpu.machine_seconds() - before) / (seconds * cpu.CORES), 1)


@dataclass(frozen=True)
class Plan:
    name: str
    warmup_s: float
    closed: tuple[int, ...]  # connections of the closed-loop (highest throughput) runs, plain
    closed_safe: tuple[int, ...]  # the same in safe mode
    closed_s: float
    closed_rounds: int  # the highest-throughput block is repeated, each system keeps its best
    fixed_rate: float
    fixed_modes: tuple[str, ...]
    fixed_s: float
    sweep: tuple[float, ...]  # offered rates of the latency-against-load curve, plain
    sweep_s: float
    io_connections: int
    io_s: float
    slow_messages: int
    sustained_s: float  # each point of the bisection on the offered rate
    sustained_tolerance: float  # the bisection stops with its bracket this close (a fraction of its top)
    slow_async: slow_async.Load

    def steps(self, systems: int, scenarios: tuple[str, ...] = ()) -> int:
        scenarios = scenarios or SCENARIOS
        closed = (len(self.closed) + len(self.closed_safe)) * self.closed_rounds
        per_system = {
            "trivial": 1 + closed + len(self.fixed_modes) + len(self.sweep),
            "sustained": 1,
            "io-bound": 1,
            "slow-async": 1,
        }
        steps = systems * sum(per_system.get(name, 0) for name in scenarios)
        return steps + 1 + ("slow" in scenarios) + ("slow-async" in scenarios)  # + start, slow, restarts


# In the order they run. slow-async comes last: a system that cannot keep up is
# left with minutes of queued 10 s handlers, which nothing after it should meet.
SCENARIOS = ("trivial", "sustained", "io-bound", "slow", "slow-async")

PLANS = {
    # Highest throughput: each system's best over several concurrencies (the
    # polling baseline peaks low, the appliance batches better the busier it is).
    "full": Plan("full", 3, (32, 128, 256), (32, 128), 7, 2, 100, ("plain", "safe"), 12,
                 (50, 100, 200, 300, 400, 500, 600, 800, 1000, 1300), 5, 100, 12, 40,
                 5, 0.03, slow_async.Load(rate=100, duration=60, seconds=10, settle=30)),
    "quick": Plan("quick", 1, (32, 128), (), 3, 1, 100, ("plain", "safe"), 3, (100, 400), 2, 100, 3, 10,
                  2, 0.03, slow_async.Load(rate=20, duration=15, seconds=10, settle=20)),
    # The test-suite's smoke test: every scenario runs, with the smallest workloads
    # (a 6 s await still needs WeChat's second delivery).
    "smoke": Plan("smoke", 1, (16,), (), 1, 1, 100, ("plain", "safe"), 1, (100,), 1, 20, 1, 2,
                  1, 0.5, slow_async.Load(rate=2, duration=2, seconds=6, settle=10)),
}  # fmt: skip


def sweep_connections(rate: float) -> int:
    """Enough connections to keep the offered rate going through 250 ms of latency."""
    return int(max(16, min(256, rate / 4)))


def sustained_connections(rate: float) -> int:
    """Enough connections to keep the offered rate going through 500 ms of latency: a sustained
    point's p99 is under a second, and a slot with no free connection counts against it."""
    return int(max(16, min(512, rate / 2)))


class Progress:
    """One line that says where the run is: rewritten in place on a terminal, a line a step otherwise."""

    def __init__(self, total: int, stream: Any = sys.stderr) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.started = time.monotonic()
        self.tty = stream.isatty()
        self.last = ""

    def step(self, what: str) -> None:
        self.done = min(self.done + 1, self.total)
        self.show(what)

    def skip(self, count: int) -> None:
        self.done = min(self.done + count, self.total)

    def show(self, what: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        line = f"[{self.done:>3}/{self.total}] {elapsed // 60}:{elapsed % 60:02d}  {what}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line[:160])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last = line

    def note(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        if self.tty and self.last:
            self.stream.write(self.last[:160])
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


class Bench:
    def __init__(self, plan: Plan, stack: str, workdir: Path, relays: int | None, workers: int | None,
                 concurrency: int | None, baselines: bool, scenarios: tuple[str, ...] = SCENARIOS,
                 async_concurrency: int | None = None, standby: int | None = None) -> None:  # fmt: skip
        self.plan = plan
        self.scenarios = tuple(name for name in SCENARIOS if name in scenarios)
        self.async_concurrency = async_concurrency
        self.workdir = workdir
        if stack == "direct":
            self.appliance: ApplianceBase = DirectAppliance(
                workdir / "appliance", relays=relays, standby=standby, workers=workers or 2, concurrency=concurrency
            )
        else:
            self.appliance = ApplianceRunner(workdir / "appliance", relays, workers, concurrency, standby)
        self.stack = stack
        self.baselines = baselines_for(self.appliance, workdir / "baselines") if baselines else []
        self.systems: list[System] = [self.appliance, *self.baselines]
        self.progress = Progress(plan.steps(len(self.systems), self.scenarios))
        # WeChat's API servers for the appliance's late replies (the customer-service API).
        self.api = FakeWeChatAPI(appid=callbacks.APPID, secret=slow_async.SECRET)
        self.runs: list[loadgen.Run] = []
        self.calibration: float | None = None
        self.results: dict[str, Any] = {}

    # -- helpers ----------------------------------------------------------------

    def _meter(self, system: System) -> CpuMeter:
        mine = system.processes()
        others = [pid for other in self.systems if other is not system for _, pid in other.processes()]
        return CpuMeter(mine, [pid for pid in others if pid not in {p for _, p in mine}], self.calibration)

    def _load(self, system: System, scenario: str, mode: str, connections: int, duration: float,
              rate: float | None = None, bot: str = "echo", record: bool = True,
              timeout: float = 10.0) -> loadgen.Run:  # fmt: skip
        run = loadgen.run(system.name, system.host, scenario, mode, connections, duration, self.workdir / "wrk",
                          rate=rate, bot=bot, meter=self._meter(system), timeout=timeout)  # fmt: skip
        settled = system.settle(SETTLE_TIMEOUT)
        if not settled and isinstance(system, ApplianceBase):
            self.progress.note(f"  note: {system.label} still had a backlog {SETTLE_TIMEOUT:.0f} s after a run")
        if record:
            self.runs.append(run)
        return run

    def _each(self, what: str, action: Callable[[System], None]) -> None:
        for system in self.systems:
            self.progress.step(f"{system.label}: {what}")
            action(system)

    # -- the run ------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.time()
        self.results["machine_busy_before_pct"] = busy = machine_busy(1.0)
        self.calibration = self.results["cpu_speed_calibration_mb_s"] = round(cpu.calibrate(), 1)
        if busy > BUSY_WARNING:
            self.progress.note(
                f"bench: the machine is already {busy:.0f}% busy (of {os.cpu_count()} cores) before the "
                "benchmark starts: the figures will be lower than on a quiet machine"
            )
        scenarios = {
            "trivial": self._trivial,
            "sustained": self._sustained,
            "io-bound": self._io_bound,
            "slow": self._slow,
            "slow-async": self._slow_async,
        }
        self.api.start()
        try:
            self._start()
            for done, name in enumerate(self.scenarios):
                self.after_others = done > 0
                scenarios[name]()
        finally:
            self.progress.show("stopping the systems")
            self._stop()
            self.api.stop()
            self.progress.close()
        return self._collect(started)

    def _start(self) -> None:
        self.appliance.extra_settings = {
            "WECHAT_APPSECRET": slow_async.SECRET,
            "WECHAT_API_BASE": self.api.base_url,
        }
        if self.async_concurrency is not None:
            self.appliance.extra_settings["WXRELAY_ASYNC_CONCURRENCY"] = str(self.async_concurrency)
        self.progress.show(f"starting the appliance ({self.stack})")
        began = time.monotonic()
        self.appliance.start()
        self.results["start_s"] = {"appliance": round(time.monotonic() - began, 1)}
        self.results["memory"] = {"idle": {"appliance": memory_report(self.appliance.processes())}}
        self.progress.step("starting the baselines")
        self._parallel(lambda baseline: baseline.start(), self.baselines)
        for baseline in self.baselines:
            self.results["memory"]["idle"][baseline.name] = memory_report(baseline.processes())

    def _trivial(self) -> None:
        plan = self.plan
        self._each("warming up", lambda s: self._load(s, "warmup", "plain", WARMUP_CONNECTIONS, plan.warmup_s,
                                                      record=False))  # fmt: skip
        for round_ in range(1, plan.closed_rounds + 1):
            for mode, connections in [("plain", c) for c in plan.closed] + [("safe", c) for c in plan.closed_safe]:
                label = f"trivial bot, closed loop, {connections} connections" + (", safe" if mode == "safe" else "")
                if plan.closed_rounds > 1:
                    label += f" (round {round_} of {plan.closed_rounds})"
                self._each(label, partial(self._closed, mode=mode, connections=connections))
        for mode in plan.fixed_modes:
            self._each(f"trivial bot at {plan.fixed_rate:g} msg/s, {mode} mode", partial(self._fixed, mode=mode))
        for system in self.systems:
            for index, rate in enumerate(plan.sweep):
                self.progress.step(f"{system.label}: latency against load, {rate:g} msg/s offered")
                run = self._load(system, "trivial-sweep", "plain", sweep_connections(rate), plan.sweep_s, rate=rate)
                if run.saturated:
                    self.progress.skip(len(plan.sweep) - index - 1)
                    break
        self.results["memory"]["after_trivial"] = {s.name: memory_report(s.processes()) for s in self.systems}

    def _sustained(self) -> None:
        """The highest offered rate each system answers ≥ 99% of with p99 < 1 s, by bisection from its
        closed-loop throughput."""
        plan = self.plan
        self.results["sustained"] = {}
        for system in self.systems:
            self.progress.step(f"{system.label}: sustained open-loop rate, by bisection")
            upper = self._closed_loop_rate(system)

            def passes(rate: float, system: System = system) -> bool:
                self.progress.show(f"{system.label}: sustained open-loop rate, by bisection: {rate:g} msg/s offered")
                run = self._load(system, "trivial-sustained", "plain", sustained_connections(rate), plan.sustained_s,
                                 rate=rate)  # fmt: skip
                return run.sustained

            search = sustained.bisect(passes, upper, plan.sustained_tolerance)
            self.results["sustained"][system.name] = {**search.as_dict(), "closed_loop": upper}

    def _closed_loop_rate(self, system: System) -> float:
        """The system's closed-loop throughput so far (trivial bot, plain): its best clean run, else its best."""
        runs = [r for r in self.runs if r.system == system.name and r.scenario == "trivial-max" and r.mode == "plain"]
        if not runs:
            connections = max(self.plan.closed)
            self.progress.show(f"{system.label}: trivial bot, closed loop, {connections} connections")
            runs = [self._load(system, "trivial-max", "plain", connections, self.plan.closed_s)]
        pool = [r for r in runs if r.clean] or runs
        return max(r.rate for r in pool)

    def _closed(self, system: System, mode: str, connections: int) -> None:
        self._load(system, "trivial-max", mode, connections, self.plan.closed_s)

    def _fixed(self, system: System, mode: str) -> None:
        self._load(system, "trivial-fixed", mode, FIXED_CONNECTIONS, self.plan.fixed_s, rate=self.plan.fixed_rate)

    def _io_bound(self) -> None:
        plan = self.plan
        self._each(f"I/O-bound bot, {plan.io_connections} senders",
                   lambda s: self._load(s, "io-bound", "plain", plan.io_connections, plan.io_s, bot="io",
                                        timeout=max(10.0, plan.io_s + 5)))  # fmt: skip

    def _slow(self) -> None:
        self.progress.step(f"slow bot: {self.plan.slow_messages} messages to each system at once, "
                           f"WeChat {slow.WECHAT_DEADLINE:g} s × {slow.WECHAT_DELIVERIES}")  # fmt: skip
        outcome: dict[str, Any] = {}

        def one(system: System) -> None:
            outcome[system.name] = slow.run(system, self.plan.slow_messages)

        threads = [threading.Thread(target=one, args=(system,)) for system in self.systems]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.results["slow"] = {
            s.name: slow.count_executions(s, outcome[s.name], settle=SETTLE_TIMEOUT) for s in self.systems
        }

    def _slow_async(self) -> None:
        load = self.plan.slow_async
        if self.after_others and self.baselines:
            # A baseline keeps minutes of earlier slow tasks queued, and its worker has prefetched some.
            self.progress.step("restarting the baselines, for a clean queue")
            self._parallel(lambda baseline: baseline.restart(), self.baselines)
        else:
            self.progress.skip(1)
        results: dict[str, Any] = {}
        # The appliance last: what it may leave queued meets nothing after it.
        for system in [*self.baselines, self.appliance]:
            wechat = f"WeChat {slow.WECHAT_DEADLINE:g} s × {slow.WECHAT_DELIVERIES}"
            self.progress.step(f"{system.label}: slow async bot ({load.seconds:g} s), {load.rate:g} msg/s "
                               f"for {load.duration:g} s, {wechat}")  # fmt: skip
            if system is self.appliance:
                system.settle(SETTLE_TIMEOUT)
            results[system.name] = slow_async.run(system, load, self.workdir / "slow-async", self._meter(system),
                                                  self.api)  # fmt: skip
            if isinstance(system, Baseline):
                system.quiesce()
        self.results["slow_async"] = {s.name: results[s.name] for s in self.systems}

    def _parallel(self, action: Callable[[Baseline], None], baselines: list[Baseline]) -> None:
        errors: list[BaseException] = []

        def one(baseline: Baseline) -> None:
            try:
                action(baseline)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(b,)) for b in baselines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def _stop(self) -> None:
        for system in reversed(self.systems):
            try:
                system.stop()  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - the others must still stop
                self.progress.note(f"  could not stop {system.label}: {exc}")

    def _collect(self, started: float) -> dict[str, Any]:
        return {
            "meta": {
                "plan": {**self.plan.__dict__, "slow_async": self.plan.slow_async.__dict__},
                "scenarios": list(self.scenarios),
                "stack": self.stack,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                "duration_s": round(time.time() - started, 1),
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "machine": platform.platform(),
                "appliance": self._appliance_config(),
                "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
            },
            "systems": {s.name: describe(s) for s in self.systems},
            "runs": [run.as_dict() for run in self.runs],
            **self.results,
        }

    def _appliance_config(self) -> dict[str, Any]:
        a = self.appliance
        standby = getattr(a, "standby", None)
        return {
            # What the appliance runs when the benchmark does not say: its own defaults.
            "relays": getattr(a, "relays", None) or int(SETTINGS["relays"].default),
            "standby": int(SETTINGS["standby_relays"].default) if standby is None else standby,
            "workers": getattr(a, "workers", None) or int(SETTINGS["workers"].default),
            "worker_concurrency": a.concurrency or int(SETTINGS["worker_concurrency"].default),  # type: ignore[attr-defined]
            "worker_pool": "threads",
            # WXRELAY_ASYNC_CONCURRENCY: None = the appliance's default.
            "async_concurrency": self.async_concurrency,
        }


def default_workdir() -> Path:
    # Short: supervisord's socket path must fit in 107 characters.
    return Path(tempfile.mkdtemp(prefix="wxb-"))
