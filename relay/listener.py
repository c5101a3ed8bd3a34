"""Reply notices from the workers, on one pub/sub connection per relay process.

Subscribing once at start (instead of once per message) means no
subscribe/unsubscribe round trips on the hot path and no window in which a
reply could be published before its waiter listens.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common import ledger
from relay.broker import Broker

log = logging.getLogger("wxrelay.relay")
RECONNECT_DELAY = 0.5


class ReplyListener:
    def __init__(self, client: aioredis.Redis, broker: Broker) -> None:
        self._client = client
        self._broker = broker
        self._waiters: dict[str, list[asyncio.Future[str]]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._client.aclose()

    def expect(self, dedupe_key: str) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters[dedupe_key].append(future)
        return future

    def forget(self, dedupe_key: str, future: asyncio.Future[str]) -> None:
        waiters = self._waiters.get(dedupe_key)
        if waiters and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._waiters[dedupe_key]

    def _resolve(self, dedupe_key: str, reply: str) -> None:
        for future in self._waiters.pop(dedupe_key, []):
            if not future.done():
                future.set_result(reply)

    async def _run(self) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(ledger.REPLY_CHANNEL)
                self.connected.set()
                # Notices published while we were away are lost: look the
                # waiting messages up once instead.
                await self._recheck()
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        self._resolve(*ledger.parse_reply_notice(message["data"]))
            except (RedisError, OSError) as exc:
                log.warning("reply channel lost (%s); reconnecting", exc)
            finally:
                self.connected.clear()
                await pubsub.aclose()
            await asyncio.sleep(RECONNECT_DELAY)

    async def _recheck(self) -> None:
        for dedupe_key in list(self._waiters):
            state, reply = await self._broker.record(dedupe_key)
            if state in ledger.REPLY_READY:
                self._resolve(dedupe_key, reply)
