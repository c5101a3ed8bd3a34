"""Reply notices from the workers, on one pub/sub connection per relay process.

Subscribing once at start (instead of once per message) means no
subscribe/unsubscribe round trips on the hot path and no window in which a
reply could be published before its waiter listens. Each relay has a channel
of its own, which its claims write into the message's record: a worker
publishes a reply to the relay holding its latest delivery, not to all of
them (a relay standing by reads none).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from redis.exceptions import RedisError

from common import ledger
from relay.broker import Broker
from relay.pipeline import PipelinedRedis

log = logging.getLogger("wxrelay.relay")
RECONNECT_DELAY = 0.5


class ReplyListener:
    def __init__(self, subscriber: PipelinedRedis, broker: Broker) -> None:
        self._subscriber = subscriber
        self._broker = broker
        self._waiters: dict[str, list[asyncio.Future[str | None]]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._subscriber.on_lost = None
        self._subscriber.close()

    def expect(self, dedupe_key: str) -> asyncio.Future[str | None]:
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiters[dedupe_key].append(future)
        return future

    def forget(self, dedupe_key: str, future: asyncio.Future[str | None]) -> None:
        waiters = self._waiters.get(dedupe_key)
        if waiters and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._waiters[dedupe_key]

    def _resolve(self, dedupe_key: str, reply: str) -> None:
        for future in self._waiters.pop(dedupe_key, []):
            if not future.done():
                future.set_result(reply)

    def _notice(self, _channel: str, data: str) -> None:
        self._resolve(*ledger.parse_reply_notice(data))

    async def _run(self) -> None:
        subscriber = self._subscriber
        subscriber.on_push = self._notice
        while True:
            lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
            subscriber.on_lost = lambda exc, lost=lost: lost.done() or lost.set_result(exc)
            try:
                # Its own channel, which its claims name; the shared one for records that name none
                # (written before relays had their own) and for workers that publish only there.
                # (One channel a call: SUBSCRIBE answers once per channel.)
                await subscriber.call("SUBSCRIBE", self._broker.reply_to)
                await subscriber.call("SUBSCRIBE", ledger.REPLY_CHANNEL)
                self.connected.set()
                # Notices published while we were away are lost: look the
                # waiting messages up once instead.
                await self._recheck()
                exc = await lost
                log.warning("reply channel lost (%s); reconnecting", exc or "closed")
            except (RedisError, OSError) as exc:
                log.warning("reply channel lost (%s); reconnecting", exc)
            finally:
                self.connected.clear()
                subscriber.on_lost = None
                subscriber.close()
            await asyncio.sleep(RECONNECT_DELAY)

    async def _recheck(self) -> None:
        for dedupe_key in list(self._waiters):
            state, reply = await self._broker.record(dedupe_key)
            if state in ledger.REPLY_READY:
                self._resolve(dedupe_key, reply)
