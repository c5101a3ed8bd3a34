"""Probes and metrics: /livez, /healthz, /metrics."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from relay.context import Relay
from relay.handler import RelayHandler
from relay.shard import Shard

# A worker heartbeats every few seconds; one not seen for this long is gone.
WORKER_SEEN_WITHIN = 30.0
REDIS_CHECK_TIMEOUT = 1.0
# A ledger call failed this recently: the operator should hear why.
RECENT_ERROR = 30.0
# Past this share of maxmemory, Redis is about to refuse writes.
MEMORY_FULL = 0.95


class LivezHandler(RelayHandler):
    """The process answers: touches nothing else, so a stalled Redis cannot fail it."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("ok")


class HealthzHandler(RelayHandler):
    """Redis reachable with room to write, a worker seen recently, nothing spooled;
    `problems` says in words what is not so. Brief (nginx's /healthz, public):
    only `ok` or `not ok`."""

    def initialize(self, relay: Relay, brief: bool = False) -> None:
        self.relay = relay
        self.brief = brief

    async def get(self) -> None:
        redises = await asyncio.gather(*(self.check(shard) for shard in self.relay.shards_in_use()))
        several = len(redises) > 1
        report: dict[str, object] = {
            "redis": all(found["redis"] for found, _ in redises),
            "workers": min(found["workers"] for found, _ in redises),
            "reply_channel": all(found["reply_channel"] for found, _ in redises),
        }
        if several:
            report["redises"] = [found for found, _ in redises]
        problems = [
            f"{found['address']}: {problem}" if several else problem for found, seen in redises for problem in seen
        ]
        report["spooled"] = self.relay.spool.depth
        report["last_minute"] = self.relay.last_minute.report()
        if self.relay.spool.depth:
            problems.append(f"{self.relay.spool.depth} messages spooled on disk, waiting for Redis")
        sources = self.relay.sources.problem()
        if sources is not None:
            problems.append(sources)
        error = self.relay.dispatcher.last_error
        if error is not None and time.monotonic() - error[0] < RECENT_ERROR:
            problems.append(f"a ledger call failed {time.monotonic() - error[0]:.0f} s ago: Redis {error[1]}")
        healthy = not problems
        report["problems"] = problems
        report["status"] = "ok" if healthy else "unhealthy"
        self.set_status(200 if healthy else 503)
        if self.brief:
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("ok" if healthy else "not ok")
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(report))

    @staticmethod
    async def check(shard: Shard) -> tuple[dict[str, Any], list[str]]:
        """One Redis the accounts use: reachable, with room, its workers seen, its reply channel heard."""
        found: dict[str, Any] = {"address": shard.address, "redis": False, "workers": 0, "reply_channel": False}
        problems: list[str] = []
        try:
            async with asyncio.timeout(REDIS_CHECK_TIMEOUT):
                found["redis"] = bool(await shard.client.ping())
                found["workers"] = await shard.broker.workers_seen(WORKER_SEEN_WITHIN)
                memory = await shard.client.info("memory")
        except (RedisError, OSError, TimeoutError) as exc:
            problems.append(f"Redis unreachable: {exc or type(exc).__name__}")
        else:
            limit = int(memory.get("maxmemory", 0))
            used = int(memory.get("used_memory", 0))
            if limit and used >= MEMORY_FULL * limit:
                problems.append(f"Redis memory full: {used} of {limit} bytes (maxmemory); messages are spooled")
            if not found["workers"]:
                problems.append(f"no worker seen in the last {WORKER_SEEN_WITHIN:.0f} s")
        found["reply_channel"] = shard.listener.connected.is_set()
        if not found["reply_channel"]:
            problems.append("not subscribed to the reply channel")
        return found, problems


class MetricsHandler(RelayHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest())
