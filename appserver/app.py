"""The Celery application the workers run: `celery -A appserver worker`."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import redis
from celery import Celery
from celery.apps import worker as celery_worker
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_after_setup,
    celeryd_init,
    worker_init,
    worker_ready,
    worker_shutdown,
)
from celery.utils.log import get_multiprocessing_logger
from kombu import Queue
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual

from appserver import prefork_metrics
from appserver.served import Served, served
from common import cpu_pinning, log_format, open_files, redaction, redis_tls
from common.accounts import Accounts
from common.settings import SETTINGS, Settings
from common.worker_number import worker_number
from wechat.exceptions import InvalidConfigError


def _configure() -> tuple[Settings, Served, str | None]:
    # Bots and tools import this package too: only a worker must stop for a bad configuration (_refuse_to_start).
    try:
        found = Settings.from_env()
    except InvalidConfigError as exc:
        # No setting can be trusted: the defaults, for an app that will not run.
        defaults = Settings.from_env({}, env_file=os.devnull)
        return defaults, Served(Accounts({}), (), defaults.redis_url), str(exc)
    try:
        serving = served(found.validate())
    except InvalidConfigError as exc:
        return found, Served(Accounts({}), (), found.redis_url), str(exc)
    # Its ledger, sessions and chores live where its accounts' queues do.
    return replace(found, redis_url=serving.redis_url), serving, None


settings, serving, _configuration_error = _configure()
# Before anything imports prometheus_client, which chooses its mode then.
prefork_metrics.prepare(settings.worker_pool, settings.worker_metrics_port)
# Where kombu's Redis transport keeps each unacknowledged message, and when it was taken.
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"

# A configuration refused is said in one line when the worker starts (_refuse_to_start), not by kombu
# failing first on a rediss:// URL's options.
_redis_url = SETTINGS["redis_url"].default if _configuration_error else settings.redis_url
app = Celery("wxrelay", broker=_redis_url, backend=_redis_url)
app.conf.update(
    # JSON only: a pickle payload on a shared Redis is remote code execution.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # A message is acknowledged when its task ends, so a worker killed
    # mid-task gives it back to the queue instead of losing it.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_soft_time_limit=settings.task_soft_time_limit,
    task_time_limit=settings.task_time_limit,
    task_default_queue=(serving.queues or [settings.queue])[0],
    # Each account's own queue: a burst or a slow bot of one waits behind itself (appserver/fairness.py).
    task_queues=[Queue(queue, routing_key=queue) for queue in serving.queues or [settings.queue]],
    # Handlers mostly wait on I/O (databases, APIs): threads let one process
    # keep dozens of them waiting at once, where prefork holds a process each.
    # Prefork remains for CPU-bound bots: only there can Celery kill a handler.
    # Threads: Celery's, whose async handlers await on a coroutine instead (appserver/awaiting.py).
    worker_pool="appserver.pool:TaskPool" if settings.worker_pool == "threads" else settings.worker_pool,
    worker_concurrency=settings.worker_concurrency,
    broker_transport_options={
        # Unacknowledged messages of a dead worker come back after this long;
        # a live worker renews it for every message it holds (appserver/lease.py).
        "visibility_timeout": settings.lease,
        "unacked_key": UNACKED,
        "unacked_index_key": UNACKED_INDEX,
        # kombu looks for such messages every 100 s by default; a user
        # waiting on WeChat deserves a look every few seconds (one cheap
        # sorted-set read under a mutex).
        "unacked_restore_interval": 2,
        "unacked_restore_throttle": 1,
    },
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
    # Nothing here uses `celery inspect` or `celery control`; with them on, each worker keeps a
    # pub/sub subscription for them, and kombu re-registers its socket on every turn of the loop.
    worker_enable_remote_control=False,
    task_send_sent_event=False,
    worker_hijack_root_logger=False,
    # rediss://: the URL's own TLS options, where kombu would check no certificate and Celery's backend
    # would refuse a URL without ssl_cert_reqs (common/redis_tls.py).
    broker_use_ssl=redis_tls.options(_redis_url),
    redis_backend_use_ssl=redis_tls.options(_redis_url),
)


@contextmanager
def _channel_client(channel: Any, client: Any = None) -> Iterator[Any]:
    """kombu's Redis transport builds a new `redis.Redis` for every ack and every
    delivery's bookkeeping (`Channel.conn_or_acquire`); with redis-py 8 that costs
    ~90 µs, twice a message, a fifth of the worker's CPU for a trivial bot. A client
    holds no connection of its own (it borrows from the channel's pool) and is
    thread-safe, so one per channel serves them all, rebuilt if the channel
    replaces its pool after a disconnect."""
    if client:
        yield client
        return
    if getattr(channel.connection, "client", None) is None:
        # The broker connection is gone and kombu closed it under us; an ack
        # still queued would crash the worker here (kombu dereferences the
        # closed connection). As a connection error it is logged instead, and
        # the message, unacknowledged, comes back within a lease: its ledger
        # record shows it answered, so it does not run again.
        raise redis.ConnectionError("the broker connection was closed")
    cached = channel.__dict__.get("_wxrelay_client")
    if cached is None or cached.connection_pool is not channel.pool:
        cached = channel.__dict__["_wxrelay_client"] = channel._create_client()
    yield cached


kombu_redis.Channel.conn_or_acquire = _channel_client
# kombu puts every unacknowledged message back on the queue when a channel
# closes — also when it closes because the connection to Redis blipped while
# the handlers of those messages still run here, which would run them twice.
# The lease gives back what a worker really let go of (appserver/lease.py).
kombu_redis.Channel.do_restore = False

_record_unacked = kombu_redis.QoS.append


def _append_even_when_full(qos: Any, message: Any, delivery_tag: str) -> None:
    """kombu records a message it took from the queue as unacknowledged (ZADD +
    HSET) after BRPOP; a Redis at maxmemory refuses that write, and kombu lets
    the error end the worker, with every handler it runs. The message is in
    hand: keep it in the worker's own bookkeeping and run it. Should the worker
    die before it is answered, the ledger's sweep queues it again."""
    try:
        _record_unacked(qos, message, delivery_tag)
    except redis.exceptions.OutOfMemoryError as exc:
        logging.getLogger("wxrelay.appserver").warning("Redis is full, a message runs unrecorded by kombu: %s", exc)
        kombu_virtual.QoS.append(qos, message, delivery_tag)


kombu_redis.QoS.append = _append_even_when_full

# Celery logs two INFO lines for every task ("received", "succeeded"): at
# hundreds of messages a second they cost the worker more CPU than running the
# bot, and supervisord as much again to write them. Failures are still logged;
# WXRELAY_LOG_LEVEL=DEBUG brings the per-task lines back.
if settings.log_level.upper() != "DEBUG":
    for _name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(_name).setLevel(logging.WARNING)

# httpx logs every request's URL at INFO, and WeChat's API carries the
# AppSecret and the access_token in the query string.
logging.getLogger("httpx").setLevel(logging.WARNING)


# Where relays and workers share the cores, a relay that waits behind a busy worker misses WeChat's
# deadline for every message it holds, while a worker that waits behind a relay only delays one reply a
# little: the workers take second place (nice 5: a third of a relay's share when the cores are full).
WORKER_NICENESS = 5


@worker_init.connect
def _refuse_to_start(sender: Any = None, **_: object) -> None:
    if _configuration_error is not None:
        # One line, not the traceback of a worker failing on its first message.
        print(f"wxrelay worker: configuration error: {_configuration_error}", file=sys.stderr)
        raise SystemExit(2)
    open_files.raise_limit()
    os.nice(WORKER_NICENESS)
    if settings.cpu_pinning and settings.worker_pool == "threads":
        # worker0, worker1, ... (supervisor's -n): each takes the core after the relay of the same number.
        number = worker_number(getattr(sender, "hostname", "") or "")
        core = cpu_pinning.pin(number + 1 if number is not None else os.getpid())
        if core is not None:
            logging.getLogger("wxrelay.appserver").info("worker keeps to core %d", core)


@celeryd_init.connect
def _json_from_the_start(**_: object) -> None:
    """Celery warns (a worker run as root) before it sets up logging, straight to stderr: in JSON mode the root
    logger has its handler from the start, Celery keeps it, and warnings go through it."""
    if settings.log_format == log_format.JSON:
        logging.basicConfig(stream=sys.__stderr__)
        log_format.install(settings.log_format)
        logging.captureWarnings(True)


def _set_up_lines(logger: logging.Logger) -> None:
    # WXRELAY_LOG_LEVEL over the command line's --loglevel: supervisor's is always INFO.
    logger.setLevel(settings.log_level)
    log_format.install(settings.log_format, logger)
    redaction.install(settings, logger, serving.accounts)


@after_setup_logger.connect
def _set_up_root_lines(logger: logging.Logger, **_: object) -> None:
    _set_up_lines(logger)
    # Celery's pool logger (billiard's) has a handler of its own, beside the root's; its level stays Celery's.
    pool = get_multiprocessing_logger()
    log_format.install(settings.log_format, pool)
    redaction.install(settings, pool, serving.accounts)


@after_setup_task_logger.connect
def _set_up_task_lines(logger: logging.Logger, **_: object) -> None:
    _set_up_lines(logger)


@celeryd_after_setup.connect
def _banner_as_a_line(instance: Any, **_: object) -> None:
    """Celery prints its banner, lines of text, to stdout: in JSON mode its facts are one line instead."""
    if settings.log_format == log_format.JSON:
        instance.quiet = True
        facts = instance.startup_info(artlines=False) + (instance.extra_info() or "")
        logging.getLogger("celery.apps.worker").info("%s", facts.strip())


@worker_ready.connect
def _no_printed_shutdown_notice(sender: Any, **_: object) -> None:
    """Celery's SIGTERM handler writes "worker: Warm shutdown" to stdout, and a signal handler cannot log
    safely: in JSON mode the same handler, silent (Celery's `verbose`)."""
    if settings.log_format == log_format.JSON:
        celery_worker.install_worker_term_handler(sender.controller, verbose=False)


@worker_shutdown.connect
def _stopped_as_a_line(sender: Any, **_: object) -> None:
    if settings.log_format == log_format.JSON:
        logging.getLogger("celery.apps.worker").info("%s stopped", sender.hostname)
