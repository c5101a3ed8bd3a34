"""`make bench` runs end to end and writes its table, JSON and plot.

With the smallest workloads (--smoke: one-second runs, two slow messages),
because speed is never asserted here: only that every scenario ran against
every system and that the three result files are there and well formed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.services import ROOT, require

SYSTEMS = {"appliance", "baseline-sync", "baseline-poll"}
# Three stacks started and stopped, an 8 s bot behind WeChat's 5 s cut.
TIMEOUT = 300


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
        for scenario in ("trivial-max", "trivial-fixed", "trivial-sweep", "io-bound"):
            assert (system, scenario) in scenarios, f"no {scenario} run of {system}"
    assert all(run["requests"] > 0 for run in data["runs"]), "a run got no answer at all"
    assert set(data["slow"]) == SYSTEMS
    assert all(data["slow"][system]["messages"] == 2 for system in SYSTEMS)
    assert data["memory"]["idle"]["appliance"]["rss_mb"] > 0
    assert {target["name"] for target in data["summary"]["targets"]} >= {
        "trivial bot: throughput",
        "I/O-bound bot: throughput",
        "slow bot: delivery",
        "memory: whole appliance at idle",
    }

    table = (out / "table.txt").read_text()
    for heading in ("1. trivial bot", "2. I/O-bound bot", "3. slow bot", "4. memory", "targets"):
        assert heading in table
    assert table.strip() in result.stdout

    png = (out / "latency.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
