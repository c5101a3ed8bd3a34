"""Scenario 5: a slow async bot, offered open-loop behind WeChat's real delivery policy.

The bot (bench/bots/slow_async.py) is `async def` and awaits 10 s before it
answers; messages arrive at a steady rate whatever the answers (100 msg/s for
60 s in the full plan: about 1,000 conversations awaiting at once), each sent
by an asyncio WeChat (bench/asyncload.py, a process of its own) that cuts a
delivery at 5 s and delivers three times. What each message got:

- answered passively, and on which delivery: the reply WeChat shows at once;
- late: the appliance gave up waiting (`success` on the last delivery) and
  the reply went by the customer-service API, here the fake WeChat API the
  benchmark points WECHAT_API_BASE at (simulator/api.py); the baselines have
  no such path;
- lost: no reply by either path `settle` seconds after the last delivery.

Beside that: handler runs per message (from the bot's count in Redis, plus,
for a baseline, the tasks still queued), the handlers awaiting at once (the
bot's count) and the conversations open at once (the generator's), the time
to the user's reply, the peak RSS of all the system's processes (sampled each
second), its CPU per message by process, the generator's own CPU, and each
relay's IOLoop stalls over the run, from its /metrics before and after.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import callbacks
from bench.bots.slow_async import INFLIGHT_KEY, PEAK_KEY, RUNS_KEY
from bench.cpu import CpuMeter
from bench.procs import ROOT, memory_report
from bench.slow import WECHAT_DEADLINE, WECHAT_DELIVERIES
from bench.systems import ApplianceBase, Baseline, System
from simulator.api import FakeWeChatAPI

SECRET = "benchbenchsecret"
USER = "o_bench_sa_{id}"
MEMORY_EVERY = 1.0
LATE_EVERY = 0.25
# The relays' IOLoop probe (relay/metrics.py).
LAG = "wxrelay_loop_lag_seconds"
LAG_MAX = "wxrelay_loop_lag_max_seconds"
STALL_LIMIT_S = 0.05


@dataclass(frozen=True)
class Load:
    rate: float  # messages offered per second
    duration: float  # seconds of offering
    seconds: float  # how long the bot awaits
    settle: float  # after the last delivery, how long a late reply may still take


def text(load: Load) -> str:
    return f"slowasync {load.seconds:g} {{id}}"


class LateSends(threading.Thread):
    """Timestamps the fake API's accepted sends as they arrive (every LATE_EVERY s)."""

    def __init__(self, api: FakeWeChatAPI) -> None:
        super().__init__(name="bench-late-sends", daemon=True)
        self.api = api
        self.first = len(api.messages)
        self.first_attempt = len(api.send_attempts)
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self.done = threading.Event()
        self.lock = threading.Lock()

    def poll(self) -> None:
        messages = self.api.messages
        now = time.monotonic()
        with self.lock:
            for message in messages[self.first + len(self.seen) :]:
                self.seen.append((now, message))

    def run(self) -> None:
        while not self.done.wait(LATE_EVERY):
            self.poll()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.poll()

    def by_text(self) -> dict[str, list[tuple[float, str]]]:
        """Each reply's text → (arrival, to whom) of every send of it."""
        found: dict[str, list[tuple[float, str]]] = {}
        with self.lock:
            for at, message in self.seen:
                content = (message.get("text") or {}).get("content")
                if content is not None:
                    found.setdefault(content, []).append((at, message.get("touser", "")))
        return found

    def refused(self) -> int:
        return sum(1 for attempt in self.api.send_attempts[self.first_attempt :] if attempt.errcode)


class MemoryPeak(threading.Thread):
    """The highest total RSS of a system's processes, sampled every MEMORY_EVERY s."""

    def __init__(self, system: System) -> None:
        super().__init__(name="bench-memory-peak", daemon=True)
        self.system = system
        self.peak: dict[str, Any] = {"rss_mb": 0.0, "pss_mb": 0.0, "processes": []}
        self.done = threading.Event()

    def sample(self) -> None:
        report = memory_report(self.system.processes())
        if report["rss_mb"] > self.peak["rss_mb"]:  # type: ignore[operator]
            self.peak = report

    def run(self) -> None:
        while not self.done.wait(MEMORY_EVERY):
            self.sample()

    def stop(self) -> dict[str, Any]:
        self.done.set()
        self.join()
        self.sample()
        return self.peak


# -- the relays' IOLoop stalls ------------------------------------------------------


def scrape_lag(port: int) -> dict[str, Any] | None:
    """The loop-lag histogram and worst stall a relay exports, or None when it exports none."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
    except httpx.HTTPError:
        return None
    buckets: dict[float, float] = {}
    count, worst = None, None
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith(LAG + "_bucket{"):
            buckets[float(name.split('le="')[1].split('"')[0])] = float(value)
        elif name == LAG + "_count":
            count = float(value)
        elif name == LAG_MAX:
            worst = float(value)
    if count is None:
        return None
    return {"buckets": buckets, "count": count, "max": worst}


def stall(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """A relay's stalls between two scrapes: how many probes ran over STALL_LIMIT_S, and the worst.

    The worst is exact when the relay's all-time maximum rose in between;
    otherwise it is known only to lie within a histogram bucket (`worst_bound_ms`)."""
    if before is None or after is None:
        return None
    probes = int(after["count"] - before["count"])
    delta = {le: after["buckets"].get(le, 0) - before["buckets"].get(le, 0) for le in sorted(after["buckets"])}
    limit = max((le for le in delta if le <= STALL_LIMIT_S), default=None)
    over = probes - int(delta[limit]) if limit is not None else None
    exact = after["max"] if after["max"] is not None and after["max"] > (before["max"] or 0) else None
    bound = next((le for le, n in delta.items() if n >= probes), None) if probes else 0.0
    return {
        "probes": probes,
        "over_limit": over,
        "worst_ms": round(exact * 1000, 1) if exact is not None else None,
        "worst_bound_ms": None if bound is None or math.isinf(bound) else round(bound * 1000, 1),
    }


# -- one run ---------------------------------------------------------------------


def run(system: System, load: Load, workdir: Path, meter: CpuMeter, api: FakeWeChatAPI | None) -> dict[str, Any]:
    """Offer `load` to `system`; what each message got, and what it cost."""
    client = system.redis()
    client.delete(RUNS_KEY, INFLIGHT_KEY, PEAK_KEY)
    late_path = isinstance(system, ApplianceBase) and api is not None
    ports = system.relay_ports() if isinstance(system, ApplianceBase) else []
    lag_before = {port: scrape_lag(port) for port in ports}
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / "asyncload-spec.json", workdir / "asyncload-out.json"
    out_path.unlink(missing_ok=True)
    spec = {
        "url": system.url,
        "token": callbacks.TOKEN,
        "appid": callbacks.APPID,
        "aes_key": callbacks.AES_KEY,
        "account": callbacks.ACCOUNT,
        "mode": "plain",
        "rate": load.rate,
        "duration": load.duration,
        "deadline": WECHAT_DEADLINE,
        "deliveries": WECHAT_DELIVERIES,
        "text": text(load),
        "user": USER,
    }
    spec_path.write_text(json.dumps(spec))
    late = LateSends(api) if late_path else None
    memory = MemoryPeak(system)
    for watcher in (late, memory):
        if watcher:
            watcher.start()
    before = meter.sample()
    limit = load.duration + WECHAT_DELIVERIES * WECHAT_DEADLINE + 60
    completed = subprocess.run(
        [sys.executable, "-m", "bench.asyncload", str(spec_path), str(out_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=limit,
    )  # fmt: skip
    if completed.returncode != 0 or not out_path.exists():
        for watcher in (late, memory):
            if watcher:
                watcher.stop()
        raise RuntimeError(f"bench.asyncload failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    generated = json.loads(out_path.read_text())
    messages = generated.pop("messages")

    # Late replies: until every message has a reply by one path or the other, or `settle` is up.
    if late is not None:
        deadline = time.monotonic() + load.settle
        waiting = {m["text"] for m in messages if m.get("reply") != m["text"]}
        while waiting and time.monotonic() < deadline:
            time.sleep(LATE_EVERY)
            late.poll()
            waiting -= set(late.by_text())
        late.stop()
    after = meter.sample()
    peak = memory.stop()
    lag_after = {port: scrape_lag(port) for port in ports}

    runs = {k: int(v) for k, v in client.hgetall(RUNS_KEY).items()}
    queued: dict[str, int] = {}
    if isinstance(system, Baseline):
        for msg_id in system.queued_msg_ids():
            queued[msg_id] = queued.get(msg_id, 0) + 1
    in_flight_peak = int(client.get(PEAK_KEY) or 0)
    result = outcome(messages, late.by_text() if late else {}, runs, queued)
    wall = after.wall - before.wall
    result.update(
        system=system.name,
        rate=load.rate,
        duration_s=load.duration,
        await_s=load.seconds,
        settle_s=load.settle if late_path else 0,
        late_path=late_path,
        late_refused=late.refused() if late else 0,
        in_flight_peak=in_flight_peak,
        outstanding_peak=generated["peak_outstanding"],
        rss_peak_mb=peak["rss_mb"],
        pss_peak_mb=peak["pss_mb"],
        memory_peak=peak["processes"],
        cpu=meter.report(before, after, len(messages)),
        loadgen={
            "cpu_s": generated["cpu_s"],
            "cpu_pct": round(100 * generated["cpu_s"] / wall, 1) if wall else None,
            "late_starts": generated["late_starts"],
            "offered_s": generated["offered_s"],
            "max_rss_mb": generated["max_rss_mb"],
        },
        relay_stall={str(port): stall(lag_before[port], lag_after[port]) for port in ports},
    )
    return result


def outcome(
    messages: list[dict[str, Any]],
    late: dict[str, list[tuple[float, str]]],
    runs: dict[str, int],
    queued: dict[str, int],
) -> dict[str, Any]:
    """What the messages got, from the generator's entries, the late sends seen and the runs counted."""
    passive, late_n, lost, twice, bad, success = 0, 0, 0, 0, 0, 0
    on_delivery = dict.fromkeys(map(str, range(1, WECHAT_DELIVERIES + 1)), 0)
    seconds: list[float] = []
    for m in messages:
        sends = [at for at, user in late.get(m["text"], []) if user == m["user"]]
        answered = m.get("reply") == m["text"]
        if "bad_reply" in m:
            bad += 1
        elif "delivery" in m and m.get("reply") is None:
            success += 1
        if answered:
            passive += 1
            on_delivery[str(m["delivery"])] += 1
            seconds.append(m["elapsed"])
        elif sends:
            late_n += 1
            seconds.append(min(sends) - m["sent"])
        else:
            lost += 1
        if len(sends) + answered > 1:
            twice += 1
    per_message = {m["id"]: runs.get(m["id"], 0) + queued.get(m["id"], 0) for m in messages}
    deliveries: dict[str, int] = {}
    for m in messages:
        for got in m["outcomes"]:
            deliveries[got] = deliveries.get(got, 0) + 1
    offered = len(messages)
    return {
        "offered": offered,
        "passive": passive,
        "passive_pct": round(100 * passive / offered, 2) if offered else 0.0,
        "on_delivery": on_delivery,
        "late": late_n,
        "lost": lost,
        "answered_twice": twice,
        "bad_replies": bad,
        "success_answers": success,
        # Every delivery made, by how it ended: an HTTP status, "timeout" (cut at 5 s) or "unreachable".
        "deliveries": dict(sorted(deliveries.items())),
        "runs": sum(runs.get(m["id"], 0) for m in messages),
        "runs_queued": sum(queued.get(m["id"], 0) for m in messages),
        "run_twice": sum(1 for n in per_message.values() if n > 1),
        "never_run": sum(1 for n in per_message.values() if n == 0),
        "reply_p50_s": percentile(seconds, 50),
        "reply_p99_s": percentile(seconds, 99),
        "reply_max_s": round(max(seconds), 2) if seconds else None,
    }


def percentile(values: list[float], p: float) -> float | None:
    """Nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 2)
