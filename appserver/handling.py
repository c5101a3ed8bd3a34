"""From an inbound message to the reply: parse, route, call, render."""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from appserver import coroutines
from appserver.bot import Bot
from appserver.session import Session
from common import ledger
from common.accounts import DEFAULT
from wechat.events import BaseEvent
from wechat.parser import parse_message
from wechat.replies import Reply, coerce_reply

log = logging.getLogger("wxrelay.appserver")


@dataclass(frozen=True)
class Answer:
    """A rendered passive reply ('' for none) and the same reply for the API."""

    xml: str
    customer_service: dict[str, Any] | None

    @classmethod
    def none(cls) -> Answer:
        return cls("", None)


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
    when not given, the default settings' ratio)."""
    msg = parse_message(xml)
    lock_ttl = hard_time_limit if hard_time_limit is not None else time_limit * 1.5
    session = Session(client, msg.source, session_ttl, lock_ttl=lock_ttl, lock_wait=time_limit, account=account)
    msg.session = session  # type: ignore[attr-defined]
    handler = bot.find_handler(msg)
    if handler is None:
        return Answer.none()
    try:
        result = handler(msg)
        if inspect.isawaitable(result):
            result = coroutines.run(result, time_limit)  # type: ignore[arg-type]
        reply = coerce_reply(result)
        answer = _render(reply, msg.source, msg.target, isinstance(msg, BaseEvent))
        session.save()
    except Exception:
        where = ledger.message_key(account, msg.dedupe_key)
        log.exception("handler %s failed on message %s", getattr(handler, "__name__", handler), where)
        return Answer.none()
    finally:
        session.release()
    return answer


def _render(reply: Reply | None, user: str, account: str, for_event: bool) -> Answer:
    if reply is None:
        return Answer.none()
    xml = reply.render(user, account, int(time.time()), for_event=for_event)
    return Answer(xml, reply.to_customer_service(user))
