"""The tasks: a message's handler, and the late send of a reply no delivery took."""

from __future__ import annotations

import json
import logging
import time
from functools import cache
from typing import NoReturn

from celery import Task
from celery.app.task import Context
from redis.commands.core import Script

from appserver import awaiting, failures, metrics, pickup, typing_indicator
from appserver.access_token import TokenError
from appserver.app import app, serving, settings
from appserver.bot import Bot
from appserver.connection import client, through_outages
from appserver.customer_service import CustomerService, SendResult
from appserver.handling import Answer, Awaiting, begin, start
from appserver.loader import load_bot
from common import ledger, problems
from common.accounts import Account
from common.log_format import about
from relay.celery_message import QUEUED_AT
from wechat.errcodes import no_permission

log = logging.getLogger("wxrelay.tasks")

HANDLE = "wxrelay.handle"
DELIVER = "wxrelay.deliver"
# Backoff of a late send WeChat could not take (network, busy -1): about six
# minutes in all, well inside the 48 hours WeChat allows a reply.
RETRY_DELAYS = (2, 4, 8, 16, 32, 60, 60, 60, 60, 60)
# How often a reply tries to carry the kept ones before it goes without them.
CARRY_TRIES = 5
SETTLED_TTL = ledger.settle_ttl(settings.deliveries, settings.wechat_timeout, settings.lease)
# Only appserver.pool's threads acknowledge a message after its awaited handler; prefork's children wait for it.
_AWAITS_APART = settings.worker_pool == "threads"


@cache
def _bot(spec: str) -> Bot:
    bot = load_bot(spec)
    bot.accounts = tuple(name for name in serving.names if serving.accounts[name].bot == spec)
    return bot


@cache
def _customer_service(name: str) -> CustomerService:
    return CustomerService(client(), serving.accounts[name])


@cache
def _script(source: str) -> Script:
    return client().register_script(source)


def _redelivered(request: Context) -> bool:
    return bool((request.delivery_info or {}).get("redelivered"))


def queue_late(dedupe_key: str) -> None:
    """Queue the late send this process now owns, on its account's queue; should it die first, the sweep
    queues it again."""
    account = serving.account_of(dedupe_key)
    if account is not None:
        queue = account.queue
    else:  # an account this worker does not know: its record names its queue
        found = through_outages(lambda: client().hget(ledger.record_key(dedupe_key), "queue"), "finding a queue")
        queue = found.decode() if found else settings.queue
    headers = {QUEUED_AT: round(time.time(), 3)}  # as the relay's messages carry it: the queue's age
    through_outages(
        lambda: deliver_late.apply_async((dedupe_key,), queue=queue, headers=headers), "queueing a late send"
    )


@app.task(name=HANDLE, bind=True)
def handle_message(self: Task, xml: str, dedupe_key: str | None = None) -> str:
    """Run the bot on one decrypted message and return the reply XML ('' for none).

    With a dedupe key (the relay always sends one) the reply goes into the
    ledger, and to the late path if WeChat has stopped waiting.
    """
    record = ledger.record_key(dedupe_key) if dedupe_key else None
    # The relay queues a message's task once; only the broker giving it back
    # (its worker lost mid-task) can bring it here again, and kombu marks
    # such a message redelivered: the first run skips the ledger look-up.
    if record is not None and _redelivered(self.request):
        state = through_outages(lambda: _script(ledger.START)(keys=[record]).decode(), f"starting {dedupe_key}")
        if state not in ledger.MAY_RUN:
            log.info("message %s already answered (%s): not run again", dedupe_key, state, extra=about(dedupe_key))
            return ""
    account = serving.account_of(dedupe_key or "")
    if account is None:
        # Removed from the accounts file while its message waited: settled with no reply, not run.
        log.error(
            "message %s: its account is not configured any more; not run", dedupe_key, extra=about(dedupe_key or "")
        )
        return _settle(dedupe_key, record, account, Answer.none())
    watch = typing_indicator.Watch(account.name) if account.typing else None
    answer = begin(
        xml, _bot(account.bot), client(), settings.session_ttl, settings.task_soft_time_limit,
        settings.task_time_limit, account=account.name, started=watch.start if watch else None,
    )  # fmt: skip
    if isinstance(answer, Awaiting):
        outcome = start(answer, settings.task_soft_time_limit)
        if watch:
            outcome.add_done_callback(lambda _: watch.stop())
        if not _AWAITS_APART:
            return _settle(dedupe_key, record, account, answer.finish(outcome))
        queue = (self.request.delivery_info or {}).get("routing_key") or account.queue
        awaiting.hold(outcome, queue, lambda: _settle(dedupe_key, record, account, answer.finish(outcome)))
        return ""
    if watch:
        watch.stop()
    return _settle(dedupe_key, record, account, answer)


def _settle(dedupe_key: str | None, record: str | None, account: Account | None, answer: Answer) -> str:
    """Store the reply in the ledger, and queue its late send if WeChat has stopped waiting."""
    if dedupe_key is None or record is None:
        return answer.xml
    # No late path for an account that wants none: a reply that missed WeChat's window ends there.
    late = answer.customer_service if account is not None and account.late_replies else None
    payload = pickup.entry(late) if late else ""
    notice = ledger.reply_notice(dedupe_key, answer.xml)
    name = account.name if account is not None else ledger.account_of(dedupe_key)
    keys = [record, ledger.DUE_KEY, ledger.pickup_key(name, answer.user)]
    args = [answer.xml, payload, ledger.REPLY_CHANNEL, notice, settings.dedupe_ttl, dedupe_key]
    outcome = through_outages(
        lambda: _script(ledger.COMPLETE)(keys=keys, args=args).decode(), f"storing the reply to {dedupe_key}"
    )
    if outcome == ledger.PICKUP:
        outcome = _settle_carrying(dedupe_key, keys, args, answer)
    if outcome == ledger.LATE:
        queue_late(dedupe_key)
    elif outcome.startswith("already:"):
        log.info(
            "message %s was answered by another run (%s): this reply is dropped",
            dedupe_key,
            outcome,
            extra=about(dedupe_key, "dropped"),
        )
    return answer.xml


def _settle_carrying(dedupe_key: str, keys: list[str], args: list[object], answer: Answer) -> str:
    """COMPLETE for a user with replies kept: this message's reply carries them (appserver/pickup.py)."""
    what = f"storing the reply to {dedupe_key}"
    store = _script(ledger.PICKUP_COMPLETE)
    for attempt in range(CARRY_TRIES):
        kept: list[str] = []
        # The last try carries none: another message of the user kept taking them first.
        if attempt < CARRY_TRIES - 1:
            found = through_outages(lambda: client().lrange(keys[2], 0, pickup.CARRY - 1), "reading kept replies")
            kept = [item.decode() for item in found]
        carried = pickup.carry(kept, answer) if kept else pickup.Carried(answer.xml, str(args[1]), [], "")
        notice = ledger.reply_notice(dedupe_key, carried.xml)
        full = [carried.xml, carried.customer_service, args[2], notice, *args[4:], settings.pickup_ttl]
        full += [*carried.entries, carried.leftover]
        outcome = through_outages(lambda full=full: store(keys=keys, args=full).decode(), what)
        if outcome == ledger.DONE and carried.entries:
            _count(dedupe_key, "pickup_delivered", len(carried.entries))
            log.info("message %s carries %d kept replies", dedupe_key, len(carried.entries), extra=about(dedupe_key))
        if outcome != "retry":
            break
    if outcome == "not-pending":
        # No delivery waits any more: this reply alone takes the usual way; the kept ones stay.
        return through_outages(lambda: _script(ledger.COMPLETE)(keys=keys, args=args).decode(), what)
    return outcome


def _count(dedupe_key: str, stat: str, amount: int = 1) -> None:
    client().hincrby(ledger.stats_key(ledger.account_of(dedupe_key)), stat, amount)


@app.task(name=DELIVER, bind=True, max_retries=len(RETRY_DELAYS), ignore_result=True)
def deliver_late(self: Task, dedupe_key: str) -> None:
    """The one send of a late reply: only the task that moves it to `sending` sends it."""
    account = serving.account_of(dedupe_key)
    if account is None:
        # Never with another account's credentials: the sweep offers it again, to its own account's queue.
        log.warning(
            "late reply to %s: its account is not configured on this worker; left to one that is",
            dedupe_key,
            extra=about(dedupe_key),
        )
        return
    if account.late_path == "pickup":
        _keep(dedupe_key, account)
        return
    service = _customer_service(account.name)
    keys = [ledger.record_key(dedupe_key), ledger.DUE_KEY]
    retries = self.request.retries
    token = ""
    if service.configured:
        try:
            token = service.token()
        except TokenError as exc:
            if retries < len(RETRY_DELAYS):
                # Nothing has begun: the reply stays `late` for the retry (or the sweep).
                _retry_later(self, service, account, dedupe_key, str(exc))
    before, payload = _script(ledger.BEGIN_SEND)(keys=keys, args=[dedupe_key])
    if before.decode() != ledger.LATE:
        log.debug("late reply to %s: nothing to send (%s)", dedupe_key, before.decode(), extra=about(dedupe_key))
        return
    if not token:
        result = SendResult("unconfigured", detail="no secret configured" if not service.configured else "no token")
    else:
        result = service.send(json.loads(payload), token)
    if result.outcome == "retry" and retries < len(RETRY_DELAYS):
        args = ["retry", result.errcode, RETRY_DELAYS[retries], SETTLED_TTL, dedupe_key]
        through_outages(lambda: _script(ledger.END_SEND)(keys=keys, args=args), f"recording the send to {dedupe_key}")
        _retry_later(self, service, account, dedupe_key, f"{result.errcode} {result.detail}", result.errcode)
    if result.outcome == "refused" and no_permission(result.errcode):
        log.warning(
            "late reply to %s: the account has no customer-service API (%d); kept for the user's next message",
            dedupe_key,
            result.errcode,
            extra=about(dedupe_key, "no_permission"),
        )
        service.count("late_no_permission")
        failures.note(account.name, problems.LATE, str(result.errcode), "kept for the user's next message instead")
        _keep(dedupe_key, account, json.loads(payload)["touser"], result.errcode)
        return
    state = {"sent": ledger.SENT, "refused": ledger.REFUSED}.get(result.outcome, ledger.FAILED)
    args = [state, result.errcode, 0, SETTLED_TTL, dedupe_key]
    through_outages(lambda: _script(ledger.END_SEND)(keys=keys, args=args), f"recording the send to {dedupe_key}")
    if result.outcome == "sent":
        service.count("late_sent")
        metrics.late_send(account.name, "sent", 0)
        log.info("late reply to %s sent through the customer-service API", dedupe_key, extra=about(dedupe_key, "sent"))
        return
    stat = {"refused": "late_refused", "unconfigured": "late_unconfigured"}.get(result.outcome, "late_failed")
    service.count(stat)
    # A network failure (or no token at all) brought back no errcode.
    metrics.late_send(account.name, "refused" if result.outcome == "refused" else "failed", result.errcode or None)
    log.warning(
        "late reply to %s not sent (%s): %s %s",
        dedupe_key,
        result.outcome,
        result.errcode,
        result.detail,
        extra=about(dedupe_key, stat.removeprefix("late_")),
    )
    failures.note(account.name, problems.LATE, str(result.errcode or result.outcome), result.detail)


def _keep(dedupe_key: str, account: Account, user: str | None = None, errcode: int | None = None) -> None:
    """The `pickup` late path: the reply waits for the user's next message (appserver/pickup.py); `errcode`:
    the refusal of the customer-service API that sent it this way."""
    record = ledger.record_key(dedupe_key)
    if user is None:
        payload = through_outages(lambda: client().hget(record, "cs"), f"reading the reply to {dedupe_key}")
        if not payload:
            log.debug("late reply to %s: nothing to keep", dedupe_key, extra=about(dedupe_key))
            return
        user = json.loads(payload)["touser"]
    keys = [record, ledger.DUE_KEY, ledger.pickup_key(account.name, user)]  # type: ignore[arg-type]
    args = [settings.pickup_ttl, SETTLED_TTL, dedupe_key]
    state = through_outages(lambda: _script(ledger.KEEP)(keys=keys, args=args).decode(), f"keeping {dedupe_key}")
    if state == ledger.KEPT:
        _count(dedupe_key, "late_kept")
        metrics.late_send(account.name, "pickup", errcode)
        log.info("late reply to %s kept for the user's next message", dedupe_key, extra=about(dedupe_key, "kept"))


def _retry_later(
    task: Task, service: CustomerService, account: Account, dedupe_key: str, why: str, errcode: int | None = None
) -> NoReturn:
    delay = RETRY_DELAYS[task.request.retries]
    service.count("late_retried")
    metrics.late_send(account.name, "retried", errcode or None)
    log.warning("late reply to %s: %s; trying again in %d s", dedupe_key, why, delay, extra=about(dedupe_key, "retry"))
    raise task.retry(countdown=delay)
