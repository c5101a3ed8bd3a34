"""The relay's side of the ledger, over an async Redis client: nothing here
blocks the IOLoop."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis

from common import ledger
from relay.celery_message import task_message
from relay.pipeline import PipelinedRedis, Script

HANDLE_TASK = "wxrelay.handle"
SWEEP_TASK = "wxrelay.sweep"


@dataclass(frozen=True)
class Claim:
    state: str  # "new" for the first delivery, else the ledger state
    deliveries: int
    reply: str


class Broker:
    """A delivery's ledger transitions go through `ledger`, one pipelined connection
    (relay.pipeline); look-ups and health checks through the redis-py `client`."""

    def __init__(self, client: aioredis.Redis, ledger_connection: PipelinedRedis, queue: str, dedupe_ttl: int) -> None:
        self.client = client
        self.ledger = ledger_connection
        self._queue = queue
        self._ttl = dedupe_ttl
        self._claim = Script(ledger.CLAIM)
        self._take = Script(ledger.TAKE)
        self._abandon = Script(ledger.ABANDON)
        self._schedule_sweep = Script(ledger.SCHEDULE_SWEEP)

    async def claim(self, dedupe_key: str, xml: str) -> Claim:
        """Count this delivery; the first one also queues the task, atomically."""
        message = task_message(HANDLE_TASK, [xml, dedupe_key], self._queue)
        state, deliveries, reply = await self.ledger.evalsha(
            self._claim, [ledger.record_key(dedupe_key), self._queue], [self._ttl, message]
        )
        return Claim(state, int(deliveries), reply)

    async def take(self, dedupe_key: str) -> None:
        await self.ledger.evalsha(self._take, [ledger.record_key(dedupe_key)], [])

    async def abandon(self, dedupe_key: str) -> tuple[str, str]:
        state, reply = await self.ledger.evalsha(self._abandon, [ledger.record_key(dedupe_key)], [])
        return state, reply

    async def schedule_sweep(self, dedupe_key: str, delay: float) -> None:
        eta = datetime.now(UTC) + timedelta(seconds=delay)
        message = task_message(SWEEP_TASK, [dedupe_key], self._queue, eta=eta)
        await self.ledger.evalsha(self._schedule_sweep, [ledger.record_key(dedupe_key), self._queue], [message])

    async def record(self, dedupe_key: str) -> tuple[str | None, str]:
        state, reply = await self.client.hmget(ledger.record_key(dedupe_key), ["state", "reply"])
        return state, reply or ""

    async def workers_seen(self, within: float) -> int:
        return int(await self.client.zcount(ledger.WORKERS_KEY, time.time() - within, "+inf"))
