"""The tasks the relay calls by name."""

from __future__ import annotations

import json
import logging
from functools import cache

import redis
from celery import Task
from celery.app.task import Context

from appserver.app import app, settings
from appserver.bot import Bot
from appserver.customer_service import CustomerService
from appserver.handling import Answer, handle
from appserver.loader import load_bot
from common import ledger

log = logging.getLogger("wxrelay.tasks")

HANDLE = "wxrelay.handle"
SWEEP = "wxrelay.sweep"


@cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


@cache
def _bot() -> Bot:
    return load_bot(settings.bot)


@cache
def _customer_service() -> CustomerService:
    return CustomerService(_client(), settings.api_base, settings.appid, settings.appsecret)


@cache
def _script(source: str) -> redis.commands.core.Script:
    return _client().register_script(source)


def _redelivered(request: Context) -> bool:
    return bool((request.delivery_info or {}).get("redelivered"))


def _deliver_late(payload: dict | None, dedupe_key: str) -> None:
    if payload is not None:
        _customer_service().send(payload, dedupe_key)


@app.task(name=HANDLE, bind=True)
def handle_message(self: Task, xml: str, dedupe_key: str | None = None) -> str:
    """Run the bot on one decrypted message and return the reply XML ('' for none).

    With a dedupe key (the relay always sends one) the reply goes into the
    ledger, and to the customer-service API if WeChat has stopped waiting.
    """
    record = ledger.record_key(dedupe_key) if dedupe_key else None
    # The relay queues a message's task once; only the broker giving it back
    # (a worker lost mid-task) can bring it here after it ran, and kombu marks
    # such a message redelivered: the first run skips the ledger look-up.
    if record is not None and _redelivered(self.request):
        state = _script(ledger.START)(keys=[record]).decode()
        if state not in (ledger.PENDING, ledger.ABANDONED, ledger.MISSING):
            log.info("message %s already answered (%s): not run again", dedupe_key, state)
            return ""
    answer: Answer = handle(xml, _bot(), _client(), settings.session_ttl, settings.task_soft_time_limit)
    if record is None:
        return answer.xml
    payload = json.dumps(answer.customer_service) if answer.customer_service else ""
    notice = ledger.reply_notice(dedupe_key, answer.xml)  # type: ignore[arg-type]
    outcome = _script(ledger.COMPLETE)(keys=[record], args=[answer.xml, payload, ledger.REPLY_CHANNEL, notice])
    if outcome.decode() == ledger.LATE:
        _deliver_late(answer.customer_service, dedupe_key)  # type: ignore[arg-type]
    return answer.xml


@app.task(name=SWEEP)
def sweep(dedupe_key: str) -> None:
    """Runs after WeChat's last delivery is due: a reply nobody carried goes late."""
    before, payload = _script(ledger.SWEEP)(keys=[ledger.record_key(dedupe_key)])
    if before.decode() == ledger.DONE:
        _deliver_late(json.loads(payload) if payload else None, dedupe_key)
