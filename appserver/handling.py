"""From an inbound message to the reply: parse, route, call, render."""

from __future__ import annotations

import inspect
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded

from appserver import coroutines, failures, metrics, wechat_api
from appserver.bot import Bot
from appserver.routing import Handler
from appserver.session import Session
from common import ledger, problems
from common.accounts import DEFAULT
from common.log_format import about
from common.metric_child import child
from wechat.events import BaseEvent
from wechat.messages import BaseMessage
from wechat.parser import parse_message
from wechat.replies import Reply, coerce_reply

log = logging.getLogger("wxrelay.appserver")
# A handler past its time: an async one cancelled (appserver/coroutines.py), a prefork one interrupted.


@dataclass(frozen=True)
class Answer:
    """A rendered passive reply ('' for none) and the same reply for the API, and whom it answers: replies
    kept for that user join it (appserver/pickup.py)."""

    xml: str
    customer_service: dict[str, Any] | None
    user: str = ""
    account_id: str = ""
    for_event: bool = False

    @classmethod
    def none(cls, msg: BaseMessage | None = None) -> Answer:
        if msg is None:
            return cls("", None)
        return cls("", None, msg.source, msg.target, isinstance(msg, BaseEvent))


@dataclass(frozen=True)
class Awaiting:
    """A handler that returned an awaitable: `finish` turns what it gives into the answer."""

    awaitable: Awaitable[Any]
    run: _Run

    def finish(self, outcome: Future[Any]) -> Answer:
        """The answer, once `outcome` (from `start`) is done; waits for it until then."""
        try:
            result = outcome.result()
        except Exception:
            return self.run.failed()
        return self.run.finish(result)


def handle(
    xml: str,
    bot: Bot,
    client: redis.Redis,
    session_ttl: int,
    time_limit: float,
    hard_time_limit: float | None = None,
    account: str = DEFAULT,
) -> Answer:
    """Never raises for anything a handler does: a failure is logged and yields no reply.

    `time_limit` is the task's soft limit: how long an async handler may run, and
    how long a handler waits for a session another message of its user holds.
    `hard_time_limit` is how long a session's lock lives (1.5 x `time_limit`
    when not given, the default settings' ratio). An async handler is awaited
    here, holding this thread: a task uses `begin` instead."""
    answer = begin(xml, bot, client, session_ttl, time_limit, hard_time_limit, account)
    if isinstance(answer, Awaiting):
        return answer.finish(start(answer, time_limit))
    return answer


def begin(
    xml: str,
    bot: Bot,
    client: redis.Redis,
    session_ttl: int,
    time_limit: float,
    hard_time_limit: float | None = None,
    account: str = DEFAULT,
    started: Callable[[BaseMessage], None] | None = None,
) -> Answer | Awaiting:
    """`handle`, but an async handler's awaitable is returned, to be awaited wherever the caller likes.

    `started` is told the message just before its handler runs."""
    begun = time.monotonic()
    msg = parse_message(xml)
    lock_ttl = hard_time_limit if hard_time_limit is not None else time_limit * 1.5
    session = Session(client, msg.source, session_ttl, lock_ttl=lock_ttl, lock_wait=time_limit, account=account)
    msg.session = session  # type: ignore[attr-defined]
    msg.api = wechat_api.api_for(account)  # type: ignore[attr-defined]
    handler = bot.find_handler(msg)
    if handler is None:
        _measure(account, metrics.NO_HANDLER, metrics.NO_REPLY, begun)
        return Answer.none(msg)
    run = _Run(msg, handler, session, account, begun)
    if started is not None:
        started(msg)
    child(metrics.IN_FLIGHT, account).inc()
    try:
        result = handler(msg)
    except Exception:
        return run.failed()
    if inspect.isawaitable(result):
        return Awaiting(result, run)
    return run.finish(result)


async def _coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def start(awaiting: Awaiting, time_limit: float) -> Future[Any]:
    """Run an async handler on the process's handler loop, cancelled after `time_limit` seconds."""
    return coroutines.start(_coroutine(awaiting.awaitable), time_limit)


@dataclass(frozen=True)
class _Run:
    """One handler's run on one message: what its result becomes, or its failure."""

    msg: BaseMessage
    handler: Handler
    session: Session
    account: str
    begun: float  # time.monotonic() when the message was taken up

    def finish(self, result: Any) -> Answer:
        try:
            reply = coerce_reply(result)
            answer = _render(reply, self.msg.source, self.msg.target, isinstance(self.msg, BaseEvent))
            self.session.save()
        except Exception:
            return self.failed()
        finally:
            self.session.release()
        outcome = metrics.REPLIED if answer.xml else metrics.NO_REPLY
        self._ended(outcome)
        if log.isEnabledFor(logging.DEBUG):  # a line a message: never built at INFO
            where = ledger.message_key(self.account, self.msg.dedupe_key)
            log.debug("message %s: %s", where, outcome, extra=about(where, outcome, self.begun))
        return answer

    def failed(self) -> Answer:
        """Logs the exception being handled, with the message's key, and keeps it for the operator; no reply."""
        self.session.release()
        where = ledger.message_key(self.account, self.msg.dedupe_key)
        name = self.handler_name
        error = sys.exc_info()[1]
        # Celery's soft limit interrupts a prefork child's handler; the handlers' loop cancels a coroutine.
        cancelled = isinstance(error, SoftTimeLimitExceeded | coroutines.TimedOut)
        outcome = metrics.TIMED_OUT if cancelled else metrics.RAISED
        log.exception("handler %s failed on message %s", name, where, extra=about(where, outcome, self.begun))
        failures.note(self.account, problems.HANDLER, name, f"{type(error).__name__}: {error}")
        self._ended(outcome)
        return Answer.none(self.msg)

    @property
    def handler_name(self) -> str:
        return getattr(self.handler, "__name__", type(self.handler).__name__)

    def _ended(self, outcome: str) -> None:
        child(metrics.IN_FLIGHT, self.account).dec()
        _measure(self.account, self.handler_name, outcome, self.begun)


def _measure(account: str, handler: str, outcome: str, begun: float) -> None:
    child(metrics.HANDLER_SECONDS, account, handler).observe(time.monotonic() - begun)
    child(metrics.HANDLER_OUTCOMES, account, outcome).inc()


def _render(reply: Reply | None, user: str, account: str, for_event: bool) -> Answer:
    if reply is None:
        return Answer("", None, user, account, for_event)
    xml = reply.render(user, account, int(time.time()), for_event=for_event)
    return Answer(xml, reply.to_customer_service(user), user, account, for_event)
