"""The delivery policy: how long one delivery of a message waits, and what it answers.

WeChat delivers a message up to three times, cutting each delivery after
5 s. Earlier deliveries hold on until WeChat hangs up, so a slow bot gets
every second WeChat offers; the last one answers `success` within the
budget if the reply is still not ready, and the reply goes late.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from common import ledger
from common.settings import Settings
from relay.broker import Broker
from relay.listener import ReplyListener

log = logging.getLogger("wxrelay.relay")

# How long past WeChat's own cut a held delivery still waits: WeChat's clock
# started before ours, so by then it has hung up unless it is not WeChat.
HOLD_GRACE = 0.5


@dataclass(frozen=True)
class Outcome:
    reply: str | None  # the reply XML, '' for `success`, None when WeChat hung up
    how: str  # passive | cached | success | late | dropped


class Dispatcher:
    def __init__(self, broker: Broker, listener: ReplyListener, settings: Settings) -> None:
        self._broker = broker
        self._listener = listener
        self._settings = settings
        self._background: set[asyncio.Task[None]] = set()
        self.in_flight = 0

    async def dispatch(self, dedupe_key: str, xml: str, hung_up: asyncio.Event) -> Outcome:
        self.in_flight += 1
        try:
            return await self._dispatch(dedupe_key, xml, hung_up)
        finally:
            self.in_flight -= 1

    async def _dispatch(self, dedupe_key: str, xml: str, hung_up: asyncio.Event) -> Outcome:
        waiter = self._listener.expect(dedupe_key)
        try:
            claim = await self._broker.claim(dedupe_key, xml)
            if claim.state in ledger.REPLY_READY:
                self._later(self._broker.take(dedupe_key))
                return Outcome(claim.reply, "cached")
            if claim.state in ledger.GONE_LATE:
                return Outcome("", "late")
            last = claim.deliveries >= self._settings.deliveries
            timeout = self._settings.reply_budget if last else self._settings.wechat_timeout + HOLD_GRACE
            reply = await self._wait(waiter, hung_up, timeout)
        finally:
            self._listener.forget(dedupe_key, waiter)
        if reply is not None:
            self._later(self._broker.take(dedupe_key))
            return Outcome(reply, "passive")
        if hung_up.is_set():
            remaining = self._settings.deliveries - claim.deliveries + 1
            self._later(self._broker.schedule_sweep(dedupe_key, remaining * self._settings.wechat_timeout))
            return Outcome(None, "dropped")
        state, reply = await self._broker.abandon(dedupe_key)
        if state == ledger.TAKEN:
            return Outcome(reply, "passive")
        return Outcome("", "success")

    @staticmethod
    async def _wait(waiter: asyncio.Future[str], hung_up: asyncio.Event, timeout: float) -> str | None:
        hang_up = asyncio.ensure_future(hung_up.wait())
        try:
            await asyncio.wait({waiter, hang_up}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hang_up.cancel()
        return waiter.result() if waiter.done() and not waiter.cancelled() else None

    def _later(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Ledger bookkeeping that the answer to WeChat need not wait for."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("ledger update failed: %s", task.exception())
