"""The worker process's Redis client for the ledger, sessions and its chores,
and how its calls ride out a Redis outage."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cache
from typing import TypeVar

import redis

from appserver.app import settings

log = logging.getLogger("wxrelay.appserver")
T = TypeVar("T")

# A half-open connection must fail a call, not hang a handler thread.
SOCKET_TIMEOUT = 5.0
BACKOFF_MAX = 5.0


@cache
def client() -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=SOCKET_TIMEOUT, socket_keepalive=True
    )


def _outage(exc: redis.RedisError) -> bool:
    """Redis unreachable or full: worth waiting for. Anything else is a bug."""
    # redis-py turns the codes it knows into types (OOM, and LOADING as a
    # ConnectionError) and strips them from the text; a busy script keeps its code.
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.exceptions.OutOfMemoryError):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("BUSY")


def through_outages(call: Callable[[], T], what: str) -> T:
    """`call()`, tried again while Redis is away or full, for as long as a record lives.

    A reply computed while Redis was down is kept by the thread that computed it
    until Redis takes it: dropping it would lose the message."""
    deadline = time.monotonic() + settings.dedupe_ttl
    delay = 0.2
    while True:
        try:
            return call()
        except redis.RedisError as exc:
            if not _outage(exc) or time.monotonic() > deadline:
                raise
            log.warning("%s: Redis unavailable (%s); trying again in %.1f s", what, exc, delay)
        time.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX)
