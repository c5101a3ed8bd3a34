"""The relay's side of the ledger, over an async Redis client: nothing here
blocks the IOLoop."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from common import ledger
from common.settings import Settings
from relay.celery_message import new_id, task_message
from relay.pipeline import PipelinedRedis, Script
from relay.seen_signatures import SignatureUse

HANDLE_TASK = "wxrelay.handle"


@dataclass(frozen=True)
class Claim:
    state: str  # "new" for the first delivery, "replayed" for a spooled one known already, else the ledger state
    deliveries: int
    reply: str


class Broker:
    """A delivery's ledger transitions go through `ledger`, one pipelined connection
    (relay.pipeline); look-ups and health checks through the redis-py `client`."""

    def __init__(self, client: aioredis.Redis, ledger_connection: PipelinedRedis, settings: Settings) -> None:
        self.client = client
        self.ledger = ledger_connection
        self._ttl = settings.dedupe_ttl
        self._due_after = ledger.due_after(settings.deliveries, settings.wechat_timeout)
        self._settled = ledger.settle_ttl(settings.deliveries, settings.wechat_timeout, settings.lease)
        self._claim = Script(ledger.CLAIM)
        self._take = Script(ledger.TAKE)
        self._abandon = Script(ledger.ABANDON)
        # This process's own reply channel on this Redis (its listener's), named in each claim.
        self.reply_to = ledger.relay_channel(uuid.uuid4().hex)

    async def claim(
        self, dedupe_key: str, xml: str, queue: str, answered: bool = False, signature: SignatureUse | None = None
    ) -> Claim:
        """Count this delivery; the first one also queues the task on its account's queue, atomically.

        `answered`: a spooled message whose delivery was answered `success`. `signature`: a plaintext
        delivery's, refused (ledger.SIGNATURE_REUSED, nothing claimed) if seen with another body."""
        # The ledger keeps the tag: by it the sweep tells a task a worker holds from one lost.
        tag = new_id()
        message = task_message(HANDLE_TASK, [xml, dedupe_key], queue, delivery_tag=tag)
        keys = [ledger.record_key(dedupe_key), queue, ledger.DUE_KEY]
        args = [self._ttl, message, str(self._due_after), int(answered), dedupe_key, tag, self.reply_to]
        if signature is not None:
            keys.append(signature.key)
            args += [signature.body_hash, signature.ttl]
        state, deliveries, reply = await self.ledger.evalsha(self._claim, keys, args)
        return Claim(state, int(deliveries), reply)

    async def take(self, dedupe_key: str) -> str:
        """May this delivery write the reply? Returns the state before."""
        keys = [ledger.record_key(dedupe_key), ledger.DUE_KEY]
        return await self.ledger.evalsha(self._take, keys, [self._settled, dedupe_key])

    async def abandon(self, dedupe_key: str) -> tuple[str, str]:
        keys = [ledger.record_key(dedupe_key), ledger.DUE_KEY]
        state, reply = await self.ledger.evalsha(self._abandon, keys, [self._settled, dedupe_key])
        return state, reply

    async def record(self, dedupe_key: str) -> tuple[str | None, str]:
        state, reply = await self.client.hmget(ledger.record_key(dedupe_key), ["state", "reply"])
        return state, reply or ""

    async def workers_seen(self, within: float) -> int:
        return int(await self.client.zcount(ledger.WORKERS_KEY, time.time() - within, "+inf"))
