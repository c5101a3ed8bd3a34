"""Workers announce themselves in Redis, so a relay's /healthz can tell that
someone is there to run its tasks."""

from __future__ import annotations

import time
from functools import cache

import redis

from appserver import background
from appserver.app import settings
from common.ledger import WORKERS_KEY

INTERVAL = 5.0


@cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_keepalive=True)


def _beat(hostname: str) -> None:
    _client().zadd(WORKERS_KEY, {hostname: time.time()})


def _leave(hostname: str) -> None:
    _client().zrem(WORKERS_KEY, hostname)


background.every(INTERVAL, "heartbeat", _beat, last=_leave)
