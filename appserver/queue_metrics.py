"""The queues as a scrape finds them: how many messages wait in each of the worker's accounts' queues,
and how long the oldest has waited.

Read from Redis when Prometheus scrapes (LLEN, and LINDEX -1: kombu pushes on the left and takes from
the right, so the right end is the oldest), on a client of its own with short timeouts: nothing on the
message path waits for it or pays for it, and with Redis away a scrape still ends within a second or
two, without these two metrics. The age comes from the time the relay (or a worker queueing a late
send) wrote into the message (relay/celery_message.py, QUEUED_AT), by this machine's clock: relays and
workers on several hosts need their clocks in step (NTP), as WeChat's timestamps do already.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from relay.celery_message import QUEUED_AT

log = logging.getLogger("wxrelay.metrics")

# Per Redis call: a scrape waits this long at most for the connection, then for the answer.
TIMEOUT = 1.0


class QueueCollector(Collector):
    """wxrelay_queue_depth and wxrelay_queue_oldest_seconds of these queues (account → queue)."""

    def __init__(self, redis_url: str, queues: Mapping[str, str]) -> None:
        self._queues = dict(queues)
        self._client = redis.Redis.from_url(redis_url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Registering the collector does not read Redis.
        return _families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for queue in self._queues.values():
                    pipe.llen(queue)
                    pipe.lindex(queue, -1)
                found = pipe.execute()
        except redis.RedisError as exc:
            # Redis down is told by the relays' /healthz and the Redis exporter; the queue's series pause.
            log.debug("queue metrics: Redis did not answer: %s", exc)
            return []
        now = time.time()
        depth, oldest = _families()
        for account, length, last in zip(self._queues, found[0::2], found[1::2], strict=True):
            depth.add_metric([account], length)
            oldest.add_metric([account], _age(last, now) if length else 0.0)
        return [depth, oldest]


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily("wxrelay_queue_depth", "Messages waiting in the account's queue.", labels=["account"]),
        GaugeMetricFamily(
            "wxrelay_queue_oldest_seconds",
            "How long the oldest message waiting in the account's queue has waited (0 when none waits).",
            labels=["account"],
        ),
    )


def _age(message: bytes | None, now: float) -> float:
    """How long ago the message was queued; 0 for one that does not say (queued by Celery itself:
    a retry, which a worker takes at once and holds until its countdown ends)."""
    try:
        queued = json.loads(message or b"{}").get("headers", {}).get(QUEUED_AT)
    except (ValueError, AttributeError):
        return 0.0
    return max(0.0, now - queued) if isinstance(queued, int | float) else 0.0
