"""Probes and metrics: /livez, /healthz, /metrics."""

from __future__ import annotations

import asyncio
import json
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from relay.context import Relay
from relay.handler import RelayHandler

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
        report: dict[str, object] = {"redis": False, "workers": 0, "reply_channel": False}
        problems: list[str] = []
        try:
            async with asyncio.timeout(REDIS_CHECK_TIMEOUT):
                report["redis"] = bool(await self.relay.client.ping())
                report["workers"] = await self.relay.broker.workers_seen(WORKER_SEEN_WITHIN)
                memory = await self.relay.client.info("memory")
        except (RedisError, OSError, TimeoutError) as exc:
            problems.append(f"Redis unreachable: {exc or type(exc).__name__}")
        else:
            limit = int(memory.get("maxmemory", 0))
            used = int(memory.get("used_memory", 0))
            if limit and used >= MEMORY_FULL * limit:
                problems.append(f"Redis memory full: {used} of {limit} bytes (maxmemory); messages are spooled")
            if not report["workers"]:
                problems.append(f"no worker seen in the last {WORKER_SEEN_WITHIN:.0f} s")
        report["reply_channel"] = self.relay.listener.connected.is_set()
        if not report["reply_channel"]:
            problems.append("not subscribed to the reply channel")
        report["spooled"] = self.relay.spool.depth
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


class MetricsHandler(RelayHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest())
