"""`python -m bench.soak`: a steady load through the whole local appliance, Redis
memory watched throughout, and what the ledger leaves behind afterwards.

`make soak` runs it: 300 msg/s for 10 minutes by default. It prints Redis's
used memory at the start, its peak and at the end, the bytes one message costs
in each place it lives (its record, its queue entry, its unacknowledged entry,
its due entry), and the keys left once the load has drained: every one of them
must have expired or been settled.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import redis

from bench import loadgen
from bench.systems import ApplianceRunner

SAMPLE_EVERY = 2.0
# Records measured per sample: enough to see each state, few enough not to load Redis.
SAMPLED_RECORDS = 50
# A settled record lives WeChat's retry window (common/ledger.settle_ttl); past it, nothing should be left.
DRAIN_TIMEOUT = 120.0


class MemoryWatch:
    """Samples INFO memory and the ledger's sizes on a thread of its own."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.samples: list[dict[str, float]] = []
        self.per_message: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-memory", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> dict[str, float]:
        info = self.client.info("memory")
        sample = {
            "t": time.time(),
            "used": float(info["used_memory"]),
            "records": float(self._count("wxrelay:msg:*")),
            "queue": float(self.client.llen("wxrelay")),
            "unacked": float(self.client.hlen("unacked")),
            "due": float(self.client.zcard("wxrelay:due")),
        }
        self.samples.append(sample)
        self._measure_one()
        return sample

    def _count(self, pattern: str) -> int:
        return sum(1 for _ in self.client.scan_iter(match=pattern, count=1000))

    def _measure_one(self) -> None:
        """MEMORY USAGE of one message in each place it lives, the largest seen."""
        for n, key in enumerate(self.client.scan_iter(match="wxrelay:msg:*", count=200)):
            if n >= SAMPLED_RECORDS:
                break
            state = self.client.hget(key, "state") or "?"
            size = self.client.memory_usage(key, samples=0) or 0
            name = f"record ({state})"
            self.per_message[name] = max(self.per_message.get(name, 0), size)
        for name, key, count in (("queue entry", "wxrelay", self.client.llen), ("unacked entry", "unacked", None)):
            total = self.client.memory_usage(key, samples=0) or 0
            n = count(key) if count else self.client.hlen(key)
            if n:
                self.per_message[name] = max(self.per_message.get(name, 0), total // n)
        due = self.client.zcard("wxrelay:due")
        if due > 100:
            self.per_message["due entry"] = (self.client.memory_usage("wxrelay:due", samples=0) or 0) // due

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except redis.RedisError:
                pass
            self._stop.wait(SAMPLE_EVERY)


def leftovers(client: redis.Redis) -> dict[str, object]:
    return {
        "queue": client.llen("wxrelay"),
        "unacked": client.hlen("unacked"),
        "due": client.zcard("wxrelay:due"),
        "records": sum(1 for _ in client.scan_iter(match="wxrelay:msg:*", count=1000)),
        "keys without expiry": sorted(
            key
            for key in client.scan_iter(match="wxrelay:*", count=1000)
            if client.ttl(key) == -1 and key not in ("wxrelay:stats", "wxrelay:workers", "wxrelay:due")
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300.0, help="messages per second")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--mode", choices=("plain", "safe"), default="plain")
    parser.add_argument("--out", type=Path, help="write the samples and figures here as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wxrelay-soak-") as work:
        appliance = ApplianceRunner(Path(work) / "appliance")
        appliance.start()
        try:
            client = appliance.redis()
            watch = MemoryWatch(client)
            start = watch.sample()
            watch.start()
            # Signed callbacks carry their timestamp, which the relay accepts for
            # WXRELAY_TIMESTAMP_WINDOW (300 s): the load is generated a minute at a time.
            runs = [
                loadgen.run(
                    "appliance",
                    appliance.host,
                    "soak",
                    args.mode,
                    connections=64,
                    duration=minute,
                    workdir=Path(work) / "load",
                    rate=args.rate,
                )  # fmt: skip
                for minute in _minutes(args.minutes)
            ]
            loaded = watch.sample()
            drained = _drain(client)
            watch.stop()
            end = watch.sample()
            left = leftovers(client)
        finally:
            appliance.stop()
    peak = max(watch.samples, key=lambda s: s["used"])
    figures = {
        "rate": args.rate, "minutes": args.minutes, "requests": sum(r.requests for r in runs),
        "errors": sum(r.errors for r in runs), "error_detail": [r.error_detail for r in runs if r.errors],
        "p99_ms_per_minute": [r.p99_ms for r in runs], "replies": sum(r.replies for r in runs),
        "redis_used_start": start["used"], "redis_used_peak": peak["used"], "redis_used_after_load": loaded["used"],
        "redis_used_end": end["used"], "peak_sample": peak, "bytes_per_message": watch.per_message,
        "drained_in_s": drained, "left": left,
    }  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({**figures, "samples": watch.samples}, indent=2))
    print(json.dumps(figures, indent=2, default=str))
    clean = drained is not None and left["queue"] == left["unacked"] == left["due"] == left["records"] == 0
    return 0 if clean and not left["keys without expiry"] else 1


def _minutes(total: float) -> list[float]:
    """`total` minutes as runs of at most 60 s each."""
    seconds = total * 60
    return [60.0] * int(seconds // 60) + ([seconds % 60] if seconds % 60 >= 1 else [])


def _drain(client: redis.Redis) -> float | None:
    """Seconds until the ledger holds nothing for the run: every record settled and expired."""
    started = time.monotonic()
    while time.monotonic() - started < DRAIN_TIMEOUT:
        left = leftovers(client)
        if not (left["queue"] or left["unacked"] or left["due"] or left["records"]):
            return time.monotonic() - started
        time.sleep(1.0)
    return None


if __name__ == "__main__":
    raise SystemExit(main())
