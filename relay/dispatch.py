"""The delivery policy: how long one delivery of a message waits, and what it answers.

WeChat delivers a message up to three times, cutting each delivery after
5 s. Earlier deliveries hold on until WeChat hangs up, so a slow bot gets
every second WeChat offers; the last one answers `success` within the
budget if the reply is still not ready, and the reply goes late.

A reply is written only after the ledger says this delivery may (TAKE): a
reply the sweep already handed to the late path is never written too.

When Redis cannot take the message (down, restarting, full), the delivery
spools it, keeps trying Redis until its budget is spent, then answers
`success`: the replayed message's reply goes late. WeChat is always
answered in time, and a valid message is never refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import OutOfMemoryError, RedisError

from common import ledger
from common.settings import Settings
from relay.broker import Broker, Claim
from relay.metrics import HELD, LEDGER_ERRORS, SPOOLED
from relay.routes import Route
from relay.seen_signatures import SignatureUse
from relay.spool import Spool

log = logging.getLogger("wxrelay.relay")

# How long past WeChat's own cut a held delivery still waits: WeChat's clock
# started before ours, so by then it has hung up unless it is not WeChat.
HOLD_GRACE = 0.5
# While Redis is away, a spooled delivery tries it again this often.
RETRY_REDIS = 0.25


class HangUp:
    """WeChat hung up on a delivery: set by its handler, seen by the dispatcher.

    Where an asyncio.Event must be waited on by a task of its own, this calls back."""

    __slots__ = ("_set", "_callbacks")

    def __init__(self) -> None:
        self._set = False
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        if not self._set:
            self._set = True
            callbacks, self._callbacks = self._callbacks, []
            for callback in callbacks:
                callback()

    def is_set(self) -> bool:
        return self._set

    def add_callback(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)


@dataclass(frozen=True)
class Outcome:
    reply: str | None  # the reply XML, '' for `success`, None when WeChat hung up
    how: str  # passive | cached | success | late | dropped | spooled | replayed


def ledger_error_reason(exc: BaseException) -> str:
    """down | timeout | full: what the operator reads in metrics and /healthz."""
    if isinstance(exc, OutOfMemoryError) or str(exc).startswith("OOM"):
        return "full"
    if "Timeout" in type(exc).__name__ or isinstance(exc, TimeoutError):
        return "timeout"
    return "down"


class Dispatcher:
    def __init__(self, spool: Spool, settings: Settings) -> None:
        self._spool = spool
        self._settings = settings
        self.in_flight = 0
        HELD.set_function(lambda: self.in_flight)
        # Keys a delivery of this process is holding while spooled: the replayer leaves them to it.
        self.held: set[str] = set()
        self.last_error: tuple[float, str] | None = None

    async def dispatch(
        self, route: Route, dedupe_key: str, xml: str, hung_up: HangUp, signature: SignatureUse | None = None
    ) -> Outcome:
        """`signature`: a plaintext delivery's, refused (how = `replayed`) when seen with another body."""
        # One coroutine the whole delivery long: a thousand deliveries are held at
        # once, and every object each holds is walked by the collector (relay/collector.py).
        self.in_flight += 1
        started = time.monotonic()
        try:
            broker, listener = route.shard.broker, route.shard.listener
            waiter = listener.expect(dedupe_key)
            try:
                claim = await self._claim(route, dedupe_key, xml, hung_up, started, signature)
                if claim is None:
                    return Outcome("", "spooled")
                if claim.state == ledger.SIGNATURE_REUSED:
                    return Outcome(None, "replayed")
                if claim.state in ledger.REPLY_READY:
                    return await self._take(broker, route.queue, dedupe_key, xml, claim.reply, "cached")
                if claim.state in ledger.GONE_LATE:
                    return Outcome("", "late")
                last = claim.deliveries >= self._settings.deliveries
                timeout = self._settings.reply_budget if last else self._settings.wechat_timeout + HOLD_GRACE
                disarm = self._arm(waiter, hung_up, timeout - (time.monotonic() - started))
                try:
                    reply = await waiter
                finally:
                    disarm()
            finally:
                listener.forget(dedupe_key, waiter)
            if reply is not None:
                return await self._take(broker, route.queue, dedupe_key, xml, reply, "passive")
            if hung_up.is_set():
                # The sweep hands the reply to the late path if no delivery comes back for it.
                return Outcome(None, "dropped")
            try:
                state, reply = await broker.abandon(dedupe_key)
                if state == ledger.TAKEN:
                    return Outcome(reply, "passive")
                if state == ledger.MISSING:
                    # Redis lost the record (a crash inside AOF's last second): the
                    # delivery in hand recreates it, abandoned, so its reply goes late.
                    await broker.claim(dedupe_key, xml, route.queue, answered=True)
            except RedisError as exc:
                # Kept answered: replayed, it is a no-op if Redis still has the record.
                self._failed(exc)
                await self._spool.put(dedupe_key, xml)
                await self._spool.mark_answered(dedupe_key)
            return Outcome("", "success")
        finally:
            self.in_flight -= 1

    async def _claim(
        self, route: Route, dedupe_key: str, xml: str, hung_up: HangUp, started: float, signature: SignatureUse | None
    ) -> Claim | None:
        """The ledger's claim; while Redis cannot take it, the spool holds the message.

        None: the budget ran out with Redis still away, the message is spooled."""
        broker, queue = route.shard.broker, route.queue
        try:
            return await broker.claim(dedupe_key, xml, queue, signature=signature)
        except RedisError as exc:
            self._failed(exc)
        if signature is not None and not route.shard.signatures.admits(signature):
            return Claim(ledger.SIGNATURE_REUSED, 0, "")
        self.held.add(dedupe_key)
        try:
            await self._spool.put(dedupe_key, xml)
            SPOOLED.inc()
            deadline = started + self._settings.reply_budget
            while time.monotonic() + RETRY_REDIS < deadline and not hung_up.is_set():
                await asyncio.sleep(RETRY_REDIS)
                try:
                    claim = await broker.claim(dedupe_key, xml, queue, signature=signature)
                except RedisError as exc:
                    self._failed(exc)
                    continue
                await self._spool.remove(dedupe_key)
                return claim
            await self._spool.mark_answered(dedupe_key)
            return None
        finally:
            self.held.discard(dedupe_key)

    async def _take(self, broker: Broker, queue: str, dedupe_key: str, xml: str, reply: str, how: str) -> Outcome:
        try:
            state = await broker.take(dedupe_key)
            if state in ledger.REPLY_READY:
                return Outcome(reply, how)
            if state == ledger.MISSING:
                # Redis lost the record with its reply: run the message again, late.
                await broker.claim(dedupe_key, xml, queue, answered=True)
        except RedisError as exc:
            # Unrecorded, a written reply could also go late: leave it to the late path.
            self._failed(exc)
        return Outcome("", "late")

    def _failed(self, exc: RedisError) -> None:
        reason = ledger_error_reason(exc)
        LEDGER_ERRORS.labels(reason).inc()
        if self.last_error is None or time.monotonic() - self.last_error[0] > 5:
            log.warning("Redis cannot take messages (%s): %s; spooling", reason, exc)
        self.last_error = (time.monotonic(), reason)

    @staticmethod
    def _arm(waiter: asyncio.Future[str | None], hung_up: HangUp, timeout: float) -> Callable[[], None]:
        """End the wait for the reply by resolving the waiter with None when the time is up or
        WeChat hangs up; returns what disarms both.

        The waiter is this delivery's own future (the listener skips one already done).
        asyncio.wait() would cost a task for the hang-up, a future and a timer each time,
        a tenth of the relay's CPU."""

        def give_up() -> None:
            if not waiter.done():
                waiter.set_result(None)

        if hung_up.is_set():
            give_up()
        timer = asyncio.get_running_loop().call_later(max(timeout, 0), give_up)
        hung_up.add_callback(give_up)

        def disarm() -> None:
            timer.cancel()
            hung_up.remove_callback(give_up)

        return disarm
