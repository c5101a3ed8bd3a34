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

It must land while Redis is full, too. A full Redis refuses every write, a
renewal's as well as kombu's restore (which ends in a write): a message
whose lease lapsed meanwhile would be given to a second worker the moment
Redis had room again, while its handler still runs here. The renewal only
rewrites scores already there, adding nothing, so it goes through a script
Redis lets write while full (`allow-oom`, Redis 7.0); with an older Redis it
is a plain ZADD, refused while full as before.
"""

from __future__ import annotations

import time
from functools import cache

from celery.worker import state
from redis.commands.core import Script

from appserver import background
from appserver.app import UNACKED_INDEX, settings
from appserver.connection import client

# KEYS: kombu's unacked index. ARGV: the time, then the tags of the messages this worker holds.
RENEW = """#!lua flags=allow-oom
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i]) end
return #ARGV - 1
"""


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


@cache
def _renew_when_full() -> Script | None:
    """The script, if this Redis knows scripts that may write while it is full (asked once)."""
    major = str(client().info("server").get("redis_version", "0")).partition(".")[0]
    return client().register_script(RENEW) if major.isdigit() and int(major) >= 7 else None


def renew(_: str = "") -> int:
    tags = held_tags()
    if tags:
        now = time.time()
        script = _renew_when_full()
        if script is None:
            client().zadd(UNACKED_INDEX, dict.fromkeys(tags, now), xx=True)
        else:
            script(keys=[UNACKED_INDEX], args=[now, *tags])
    return len(tags)


background.every(settings.lease / 3, "lease", renew)
