"""`make bench` runs end to end and writes its table, JSON and plot.

With the smallest workloads (--smoke: one-second runs, two slow messages, a
bisection to within 50%, four slow async messages), because speed is never
asserted here: only that every scenario ran against every system, that the
three result files are there and well formed, and that the appliance answers
a handful of slow async messages as it must (with 100 handler slots to spare).
The arithmetic behind the figures (the bisection, what a message got, a
relay's stalls) is checked on its own first, without any system.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import slow_async
from bench.loadgen import Run
from bench.sustained import bisect
from tests.services import ROOT, require

SYSTEMS = {"appliance", "baseline-sync", "baseline-poll"}
# Three stacks started and stopped, an 8 s bot and a 6 s async bot behind WeChat's 5 s cut.
TIMEOUT = 400


def test_the_bisection_brackets_the_highest_sustained_rate() -> None:
    search = bisect(lambda rate: rate <= 300, upper=491, tolerance=0.03)
    assert search.converged and search.lo <= 300 < search.hi and search.hi - search.lo <= 0.03 * search.hi
    assert search.points[0] == (491, False) and len(search.points) <= 8
    # An upper bracket that passes is raised; one that never fails says "at least".
    assert bisect(lambda rate: rate <= 600, upper=491, tolerance=0.03).lo > 491
    assert bisect(lambda rate: True, upper=100, tolerance=0.03).hi is None
    # Nothing sustained: the search ends, at no rate.
    nothing = bisect(lambda rate: False, upper=100, tolerance=0.03)
    assert nothing.lo == 0 and len(nothing.points) <= 12


def _paced(**figures: object) -> Run:
    base = {"system": "s", "scenario": "trivial-sustained", "mode": "plain", "connections": 16, "duration_s": 1.0,
            "offered_rate": 90.0, "requests": 89, "rate": 89.0, "replies": 89, "p99_ms": 14.0}  # fmt: skip
    return Run(**{**base, **figures})  # type: ignore[arg-type]


def test_a_sustained_rate_answers_what_it_is_offered_in_time() -> None:
    # The request still in flight when wrk stops does not count against it.
    assert _paced().sustained
    assert not _paced(p99_ms=1200.0).sustained
    assert not _paced(replies=80, errors=9, error_detail={"no_reply": 9}).sustained
    assert not _paced(errors=3, error_detail={"timeout": 3}).sustained
    assert not _paced(late_slots=5).sustained  # every connection busy: the rate was not really offered
    assert not _paced(requests=70, replies=70, rate=70.0).sustained
    assert not _paced(offered_rate=None).sustained  # closed loop


def test_each_slow_async_message_is_counted_once_by_what_it_got() -> None:
    def sent(n: int, **got: object) -> dict[str, object]:
        return {"id": str(n), "user": f"u{n}", "text": f"slowasync 10 {n}", "sent": 100.0, "outcomes": [], **got}

    messages = [
        sent(1, delivery=3, elapsed=10.1, reply="slowasync 10 1", outcomes=["timeout", "timeout", "200"]),  # passive
        sent(2, delivery=3, elapsed=14.6, reply=None),  # `success`, then late
        sent(3, delivery=3, elapsed=14.6, reply=None),  # `success`, never sent: lost
        sent(4, outcomes=["timeout", "unreachable", "502"]),  # no delivery answered: lost
        sent(5, delivery=2, elapsed=10.0, reply="slowasync 10 5"),  # passive, and late too
        sent(6, delivery=1, elapsed=0.1, reply="something else"),  # a wrong reply: lost
    ]
    late = {"slowasync 10 2": [(125.0, "u2")], "slowasync 10 5": [(130.0, "u5")], "slowasync 10 3": [(1.0, "other")]}
    got = slow_async.outcome(messages, late, runs={"1": 1, "2": 1, "3": 2, "5": 1}, queued={"4": 1})
    assert (got["passive"], got["late"], got["lost"], got["answered_twice"]) == (2, 1, 3, 1)
    assert got["on_delivery"] == {"1": 0, "2": 1, "3": 1} and got["success_answers"] == 2
    assert (got["runs"], got["runs_queued"], got["run_twice"], got["never_run"]) == (5, 1, 1, 1)
    assert got["reply_p50_s"] == 10.1 and got["reply_max_s"] == 25.0
    assert got["deliveries"] == {"200": 1, "502": 1, "timeout": 3, "unreachable": 1}


def test_a_relays_stalls_between_two_scrapes() -> None:
    def scrape(counts: list[float], worst: float) -> dict[str, object]:
        les = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, float("inf")]
        return {"buckets": dict(zip(les, counts, strict=True)), "count": counts[-1], "max": worst}

    before = scrape([5, 9, 10, 10, 10, 10, 10, 10, 10], 0.008)
    quiet = slow_async.stall(before, scrape([50, 98, 100, 100, 100, 100, 100, 100, 100], 0.008))
    assert quiet == {"probes": 90, "over_limit": 0, "worst_ms": None, "worst_bound_ms": 10.0}
    stalled = slow_async.stall(before, scrape([50, 90, 90, 90, 95, 97, 100, 100, 100], 0.2))
    assert stalled == {"probes": 90, "over_limit": 5, "worst_ms": 200.0, "worst_bound_ms": 250.0}
    assert slow_async.stall(None, before) is None


def test_make_bench_writes_the_table_the_json_and_the_plot(tmp_path: Path) -> None:
    for binary in ("wrk", "redis-server", "nginx", "supervisord"):
        require(binary)
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WECHAT_", "WXRELAY_", "BENCH_", "MAKE"))}
    # This test run's virtualenv, as it is: make adds the plot's dependencies only if they are missing.
    env.update(VENV=sys.prefix, VENV_READY="1")
    result = subprocess.run(
        ["make", "--no-print-directory", "bench", f"BENCH_FLAGS=--smoke --out {out}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, f"make bench exited {result.returncode}:\n{result.stdout}\n{result.stderr[-4000:]}"

    data = json.loads((out / "bench.json").read_text())
    assert set(data["systems"]) == SYSTEMS
    scenarios = {(run["system"], run["scenario"]) for run in data["runs"]}
    for system in SYSTEMS:
        for scenario in ("trivial-max", "trivial-fixed", "trivial-sweep", "trivial-sustained", "io-bound"):
            assert (system, scenario) in scenarios, f"no {scenario} run of {system}"
    assert all(run["requests"] > 0 for run in data["runs"]), "a run got no answer at all"
    assert set(data["slow"]) == SYSTEMS
    assert all(data["slow"][system]["messages"] == 2 for system in SYSTEMS)
    assert data["memory"]["idle"]["appliance"]["rss_mb"] > 0

    # The headline: a bisection on the offered rate, from the closed-loop throughput down.
    assert set(data["sustained"]) == SYSTEMS
    for system, search in data["sustained"].items():
        assert search["points"] and search["upper_start"] > 0, system
        assert search["points"][0]["rate"] == round(search["upper_start"], 1)
    # Slow async: the same few messages to each system; the appliance has slots to spare for them.
    assert set(data["slow_async"]) == SYSTEMS
    load = data["meta"]["plan"]["slow_async"]
    assert {result["offered"] for result in data["slow_async"].values()} == {round(load["rate"] * load["duration"])}
    ours = data["slow_async"]["appliance"]
    assert ours["passive"] == ours["offered"] and ours["lost"] == 0 and ours["run_twice"] == 0, ours
    assert ours["on_delivery"]["2"] == ours["offered"]  # a 6 s await: WeChat's second delivery
    assert ours["in_flight_peak"] >= 1 and ours["rss_peak_mb"] > 0 and ours["relay_stall"]
    assert {target["name"] for target in data["summary"]["targets"]} >= {
        "trivial bot: throughput",
        "I/O-bound bot: throughput",
        "slow bot: delivery",
        "memory: whole appliance at idle",
    }
    assert sum(target["name"].startswith("slow async bot") for target in data["summary"]["targets"]) == 5

    table = (out / "table.txt").read_text()
    for heading in ("headline:", "1. trivial bot", "2. I/O-bound bot", "3. slow bot", "4. memory",
                    "5. slow async bot", "targets"):  # fmt: skip
        assert heading in table
    assert table.strip() in result.stdout

    png = (out / "latency.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
