"""Spooled messages go back into the ledger once Redis takes writes again."""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from relay.broker import Broker
from relay.dispatch import Dispatcher
from relay.metrics import REPLAYED, SPOOL_DEPTH
from relay.spool import Spool

log = logging.getLogger("wxrelay.relay")

INTERVAL = 0.5
BATCH = 100


class Replayer:
    def __init__(self, broker: Broker, spool: Spool, dispatcher: Dispatcher) -> None:
        self._broker = broker
        self._spool = spool
        self._dispatcher = dispatcher
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._spool.depth:
            log.info("%d spooled messages from before this relay started: replaying", self._spool.depth)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            SPOOL_DEPTH.set(self._spool.depth)
            if self._spool.depth:
                await self.replay()
            await asyncio.sleep(INTERVAL)

    async def replay(self) -> int:
        """One pass over the spool, oldest first; stops at the first Redis error."""
        replayed = 0
        for spooled in await self._spool.oldest(BATCH):
            if spooled.dedupe_key in self._dispatcher.held:
                continue  # a delivery of ours holds it and is trying Redis itself
            try:
                await self._broker.claim(spooled.dedupe_key, spooled.xml, answered=spooled.answered)
            except RedisError:
                break
            await self._spool.remove(spooled.dedupe_key)
            REPLAYED.inc()
            replayed += 1
        if replayed:
            log.info("replayed %d spooled messages into the ledger (%d left)", replayed, self._spool.depth)
        return replayed
