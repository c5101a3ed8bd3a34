"""A worker's hold on the messages it has taken from the queue.

kombu's Redis transport gives an unacknowledged message back to the queue
once it has been held longer than the visibility timeout, measured from
when it was taken. A fixed timeout must choose between two failures: short,
and a slow handler still running is given to a second worker (the handler
runs twice); long, and the message of a worker killed mid-handler waits
minutes to run again. So the timeout is short (WXRELAY_LEASE) and every
worker renews it, every third of it, for each message it holds — running,
waiting for a pool slot, or waiting for its countdown: a live worker keeps
its messages however long they take, a dead one loses them within a lease.

The renewal rewrites the time kombu recorded for the message in its
unacked index (ZADD XX: only messages still unacknowledged), the one thing
kombu's restore looks at.
"""

from __future__ import annotations

import time

from celery.worker import state

from appserver import background
from appserver.app import UNACKED_INDEX, settings
from appserver.connection import client


def held_tags() -> list[str]:
    """Delivery tags of every message this worker process holds."""
    for _ in range(5):
        try:
            requests = [*state.reserved_requests, *state.active_requests, *state.scheduled_requests]
            break
        except RuntimeError:  # a set changed while another thread read it: read again
            continue
    else:
        return []
    return list({tag for request in requests if (tag := request.message.delivery_tag)})


def renew(_: str = "") -> int:
    tags = held_tags()
    if tags:
        now = time.time()
        client().zadd(UNACKED_INDEX, dict.fromkeys(tags, now), xx=True)
    return len(tags)


background.every(settings.lease / 3, "lease", renew)
