"""Several messages a round trip: BLMPOP in place of kombu's BRPOP.

kombu's Redis transport takes one message per BRPOP, and a BRPOP per turn of
the worker's event loop: under load, when the queue holds more than one
message, every message costs the worker's loop a round trip to Redis (and
Redis a wake-up) of its own. BLMPOP (Redis 7.0) takes up to COUNT messages from
the first non-empty queue in the same one command, blocking as BRPOP does when
all are empty: at load a turn takes what the worker has room for, idle it
waits exactly as before.

The count is what the worker's prefetch leaves room for and its fairness among
accounts allows (appserver/fairness.py), at most BATCH: a message taken is a
message held, and a worker killed while it holds them gives them back as it
would any other (the ledger's lease and sweep). With a Redis older than 7.0, or
a key prefix, it is kombu's BRPOP, one message a turn, in the same fair shares.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

from appserver import fairness

# Enough to take a turn's worth at a thousand messages a second; more would hold
# messages one worker cannot start that another idle one could.
BATCH = 8

_brpop_read = kombu_redis.Channel._brpop_read


def _blmpop_available(channel: Any) -> bool:
    """Whether this channel's Redis has BLMPOP (asked once, on the channel's first pop)."""
    found = channel.__dict__.get("_wxrelay_blmpop")
    if found is None:
        version = str(channel.client.info("server").get("redis_version", ""))
        found = _version(version) >= (7, 0) and not channel.global_keyprefix
        channel.__dict__["_wxrelay_blmpop"] = found
    return found


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(".")[:2])
    except ValueError:
        return ()


def _pop_start(channel: Any, timeout: float | None = None) -> None:
    """kombu's _brpop_start, for the queues (and as many messages) the account shares leave room for."""
    queues, room = fairness.consumable(channel, BATCH)
    if not queues:
        return
    wait = channel.brpop_timeout if timeout is None else timeout
    keys = [channel._q_for_pri(queue, pri) for pri in channel.priority_steps for queue in queues]
    if _blmpop_available(channel):
        command = ["BLMPOP", wait or 0, len(keys), *keys, "RIGHT", "COUNT", max(1, room)]
    else:
        command = ["BRPOP", *keys, wait or 0]
        if channel.global_keyprefix:
            command = channel.client._prefix_args(command)
    channel._in_poll = channel.client.connection
    channel._brpop_sent_at = monotonic()
    channel.client.connection.send_command(*command)


def _pop_read(channel: Any, **options: Any) -> bool:
    """kombu's _brpop_read, for a BLMPOP's reply: every message it brought, delivered in order."""
    if not channel.__dict__.get("_wxrelay_blmpop"):
        return _brpop_read(channel, **options)
    try:
        try:
            reply = channel.client.parse_response(channel.client.connection, "BLMPOP", **options)
        except channel.connection_errors:
            # As kombu's: the next turn reconnects.
            channel.client.connection.disconnect()
            raise
        if not reply:
            raise kombu_redis.Empty()
        key, items = reply
        queue = bytes_to_str(key).rsplit(channel.sep, 1)[0]
        channel._queue_cycle.rotate(queue)
        for item in items:
            channel.connection._deliver(kombu_redis.loads(bytes_to_str(item)), queue)
        return True
    finally:
        channel._in_poll = None
        channel._flush_brpop_reauth()


kombu_redis.Channel._brpop_start = _pop_start
kombu_redis.Channel._brpop_read = _pop_read
