"""Probes and metrics: /livez, /healthz, /metrics."""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from tornado.web import RequestHandler

from relay.context import Relay

# A worker heartbeats every few seconds; one not seen for this long is gone.
WORKER_SEEN_WITHIN = 30.0
REDIS_CHECK_TIMEOUT = 1.0


class LivezHandler(RequestHandler):
    """The process answers: touches nothing else, so a stalled Redis cannot fail it."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("ok")


class HealthzHandler(RequestHandler):
    """Redis reachable and at least one worker seen recently."""

    def initialize(self, relay: Relay) -> None:
        self.relay = relay

    async def get(self) -> None:
        report: dict[str, object] = {"redis": False, "workers": 0, "reply_channel": False}
        try:
            async with asyncio.timeout(REDIS_CHECK_TIMEOUT):
                report["redis"] = bool(await self.relay.client.ping())
                report["workers"] = await self.relay.broker.workers_seen(WORKER_SEEN_WITHIN)
        except (RedisError, OSError, TimeoutError):
            pass
        report["reply_channel"] = self.relay.listener.connected.is_set()
        healthy = report["redis"] and report["workers"] and report["reply_channel"]
        report["status"] = "ok" if healthy else "unhealthy"
        self.set_status(200 if healthy else 503)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(report))


class MetricsHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest())
