"""Spooled messages go back into the ledger once Redis takes writes again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from common.ledger import account_of
from common.log_format import about
from relay.dispatch import Dispatcher
from relay.metrics import REPLAYED, SPOOL_DEPTH
from relay.routes import Route
from relay.spool import Spool

log = logging.getLogger("wxrelay.relay")

INTERVAL = 0.5
BATCH = 100


class Replayer:
    def __init__(self, route_of: Callable[[str], Route | None], spool: Spool, dispatcher: Dispatcher) -> None:
        self._route_of = route_of
        self._spool = spool
        self._dispatcher = dispatcher
        self._task: asyncio.Task[None] | None = None
        self._unserved: set[str] = set()

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
        """One pass over the spool, oldest first; a Redis that fails is not tried again in this pass."""
        replayed = 0
        unserved: set[str] = set()
        failed: set[int] = set()
        for spooled in await self._spool.oldest(BATCH):
            if spooled.dedupe_key in self._dispatcher.held:
                continue  # a delivery of ours holds it and is trying Redis itself
            route = self._route_of(spooled.dedupe_key)
            if route is None:
                # Its account was removed while it waited: kept, should the account come back.
                unserved.add(account_of(spooled.dedupe_key))
                continue
            if id(route.shard) in failed:
                continue
            try:
                await route.shard.broker.claim(spooled.dedupe_key, spooled.xml, route.queue, answered=spooled.answered)
            except RedisError:
                # That Redis is still away; another account's may not be.
                failed.add(id(route.shard))
                continue
            await self._spool.remove(spooled.dedupe_key)
            REPLAYED.inc()
            log.debug(
                "message %s replayed from the spool", spooled.dedupe_key, extra=about(spooled.dedupe_key, "replayed")
            )
            replayed += 1
        if unserved and unserved != self._unserved:
            log.error("spooled messages of accounts no longer configured are kept: %s", ", ".join(sorted(unserved)))
        self._unserved = unserved
        if replayed:
            log.info("replayed %d spooled messages into the ledger (%d left)", replayed, self._spool.depth)
        return replayed
