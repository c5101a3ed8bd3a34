"""Workers announce themselves in Redis, so a relay's /healthz can tell that
someone is there to run its tasks."""

from __future__ import annotations

import logging
import threading
import time

import redis
from celery.signals import worker_ready, worker_shutdown

from appserver.app import settings
from common.ledger import WORKERS_KEY

INTERVAL = 5.0
log = logging.getLogger("wxrelay.heartbeat")
_stop = threading.Event()


def _beat(hostname: str) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    while not _stop.is_set():
        try:
            client.zadd(WORKERS_KEY, {hostname: time.time()})
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)
        _stop.wait(INTERVAL)
    try:
        client.zrem(WORKERS_KEY, hostname)
    except redis.RedisError:
        pass


@worker_ready.connect
def start(sender: object, **_: object) -> None:
    hostname = getattr(sender, "hostname", "worker")
    threading.Thread(target=_beat, args=(hostname,), name="wxrelay-heartbeat", daemon=True).start()


@worker_shutdown.connect
def stop(**_: object) -> None:
    _stop.set()
