"""wrk runs: fresh signed requests in, figures out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import callbacks
from bench.cpu import CpuMeter
from bench.procs import ROOT

SCRIPT = ROOT / "bench" / "wrk" / "replay.lua"
# A closed-loop run is given requests for this rate; no system here comes close.
CLOSED_LOOP_CEILING = 4000
# A paced point is saturated when it falls this far behind the offered rate.
BEHIND = 0.9
P99_LIMIT_MS = 1000.0
# Open loop: the share of the offered messages a sustained rate answers.
ANSWERED = 0.99


@dataclass
class Run:
    system: str
    scenario: str
    mode: str
    connections: int
    duration_s: float
    offered_rate: float | None  # None: closed loop
    requests: int = 0
    rate: float = 0.0
    replies: int = 0
    errors: int = 0
    error_detail: dict[str, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p75_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    late_slots: int = 0
    exhausted: bool = False
    cpu: dict[str, object] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """No error of any kind, and p99 within a second."""
        return self.errors == 0 and self.requests > 0 and (self.p99_ms or 0) < P99_LIMIT_MS and not self.exhausted

    @property
    def saturated(self) -> bool:
        """The system could not keep up with the offered rate (or broke doing so)."""
        if not self.clean:
            return True
        return self.offered_rate is not None and self.rate < BEHIND * self.offered_rate

    @property
    def offered(self) -> int | None:
        """Messages the paced schedule offered over the run (None: closed loop)."""
        return None if self.offered_rate is None else round(self.offered_rate * self.duration_s)

    @property
    def answered_pct(self) -> float | None:
        """Of the requests whose fate is known (answered, or failed: refused, cut, timed out), the share
        answered with a real reply. The few still in flight when wrk stops count for nothing."""
        failed = sum(v for k, v in self.error_detail.items() if k in ("connect", "read", "write", "timeout"))
        done = self.requests + failed
        return round(100 * self.replies / done, 2) if done else None

    @property
    def sustained(self) -> bool:
        """Open loop: ≥ 99% answered with a real reply, p99 under a second, and the offered rate really
        offered and kept up with: wrk had a free connection for ≥ 99% of the schedule's slots (a system
        that falls behind holds them all), and answered within BEHIND of the rate."""
        offered = self.offered
        if not offered or self.exhausted or self.p99_ms is None or self.answered_pct is None:
            return False
        kept = self.late_slots <= (1 - ANSWERED) * offered and self.rate >= BEHIND * (self.offered_rate or 0)
        return self.answered_pct >= 100 * ANSWERED and self.p99_ms < P99_LIMIT_MS and kept

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "clean": self.clean,
            "saturated": self.saturated,
            "answered_pct": self.answered_pct,
            "sustained": self.sustained,
        }


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    return path


def run(
    system: str,
    host: str,
    scenario: str,
    mode: str,
    connections: int,
    duration: float,
    workdir: Path,
    rate: float | None = None,
    bot: str = "echo",
    timeout: float = 10.0,
    meter: CpuMeter | None = None,
) -> Run:
    """One wrk run against http://host/wechat; the requests are generated right before it."""
    workdir.mkdir(parents=True, exist_ok=True)
    duration = max(1, round(duration))  # wrk counts whole seconds
    count = int((rate * 1.1 if rate else CLOSED_LOOP_CEILING) * duration) + connections + 100
    requests = callbacks.write_requests(workdir / "requests.bin", count, mode, host, bot)
    out = workdir / "wrk.json"
    out.unlink(missing_ok=True)
    env = {
        **os.environ,
        "BENCH_REQUESTS": str(requests),
        "BENCH_OUT": str(out),
        # A real reply: encrypted in safe mode, else the echoed text.
        "BENCH_EXPECT": "<Encrypt>" if mode == "safe" else f"<Content><![CDATA[{bot} ",
    }
    env.pop("BENCH_RATE", None)
    if rate:
        env["BENCH_RATE"] = str(rate)
    argv = [
        wrk_binary(), "-t1", f"-c{connections}", f"-d{duration}s", f"--timeout={round(timeout)}s",
        "-s", str(SCRIPT), f"http://{host}",
    ]  # fmt: skip
    before = meter.sample() if meter else None
    try:
        completed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + timeout + 30)
    finally:
        requests.unlink(missing_ok=True)
    after = meter.sample() if meter else None
    if completed.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stdout}\n{completed.stderr}")
    figures = json.loads(out.read_text())
    result = _result(system, scenario, mode, connections, duration, rate, figures)
    if before and after:
        result.cpu = meter.report(before, after, result.requests)
    return result


def _ms(figures: dict[str, float | None], name: str) -> float | None:
    value = figures.get(name)
    return None if value is None else round(value / 1000, 2)


def _result(
    system: str, scenario: str, mode: str, connections: int, duration: float, rate: float | None, f: dict
) -> Run:
    detail = {
        "connect": f["errors_connect"],
        "read": f["errors_read"],
        "write": f["errors_write"],
        "http_status": f["errors_status"],
        "timeout": f["errors_timeout"],
        "no_reply": f["no_reply"],
        "bad_reply": f["bad_reply"],
    }
    detail = {k: int(v) for k, v in detail.items() if v}
    seconds = f["duration_us"] / 1e6
    answered = f["requests"] > 0
    return Run(
        system=system,
        scenario=scenario,
        mode=mode,
        connections=connections,
        duration_s=round(seconds, 2),
        offered_rate=rate,
        requests=int(f["requests"]),
        rate=round(f["requests"] / seconds, 1) if seconds else 0.0,
        replies=int(f["replies"]),
        errors=sum(detail.values()),
        error_detail=detail,
        p50_ms=_ms(f, "latency_p50_us") if answered else None,
        p75_ms=_ms(f, "latency_p75_us") if answered else None,
        p90_ms=_ms(f, "latency_p90_us") if answered else None,
        p99_ms=_ms(f, "latency_p99_us") if answered else None,
        p999_ms=_ms(f, "latency_p99.9_us") if answered else None,
        max_ms=_ms(f, "latency_max_us") if answered else None,
        mean_ms=_ms(f, "latency_mean_us") if answered else None,
        late_slots=int(f["late_slots"]),
        exhausted=bool(f["exhausted"]),
    )
