"""kombu's record of the messages a worker holds, written once a turn of the event loop.

kombu's Redis transport records every message it takes from the queue as
unacknowledged (ZADD to the index, HSET of the message) and removes it when the
task is acknowledged (ZREM, HDEL): two MULTI/EXEC transactions a message, each
a blocking round trip through redis-py on the thread that runs the event loop,
which is also the thread that takes the next message. For a trivial bot they
were two fifths of the worker's CPU, and each one woke Redis and the worker
once more (across cores, a wake-up costs more than the write).

Here those writes are queued in the event loop's thread and written together,
in one pipeline without MULTI/EXEC, once per turn of the loop (the hub's
on_tick, just before it polls): at load, the records of the messages one turn
took and the removals of those that finished since go out in one round trip.
In order on one connection, a message's record is written before its removal;
a reply error among them is logged, as kombu's own would be, and a record a
full Redis refused is written again through a script it lets write then.

What a write that never lands costs was already the cost of a failed one: a
message taken but not recorded (the worker dies within the millisecond) is
queued again by the ledger's sweep, as after a death between BRPOP and kombu's
own record; a removal lost leaves the message to come back after a lease, and
its ledger record says it was answered, so it does not run again.

The record is the message as BRPOP brought it: kombu's parses it and encodes it
again for the HSET (a fifth of what the event loop's thread did per message);
here the text BRPOP read is kept beside what it parsed into and written as it
came. The same parse skips kombu's object hook (a Python call for every JSON
object) unless the text holds one of kombu's typed values.

Anything that reads the record right away (a reject that gives the message
back, the channel closing) first writes what is queued. Outside the loop's
thread, or with a key prefix, kombu's own writes run unchanged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from kombu.asynchronous import get_event_loop
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from kombu.utils.json import dumps

# After appserver.app: its QoS.append (which survives a full Redis) is the fallback.
from appserver import app as _app  # noqa: F401

log = logging.getLogger("wxrelay.appserver")

_kombu_loads = kombu_redis.loads
# The message the event loop's thread parsed last, and its text.
_last_parsed: tuple[Any, str] = (None, "")

_FULL = kombu_redis.redis.exceptions.OutOfMemoryError
# KEYS: kombu's unacked index, its records. ARGV: per message, the time, its tag and its record.
# A message taken while Redis is full runs all the same; unrecorded, the ledger's sweep would find it
# neither queued nor held and queue it again while it runs. Its record is the message moved out of the
# queue, not memory added: Redis lets this script write it while full.
RECORD_WHILE_FULL = """#!lua flags=allow-oom
for i = 1, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
end
return #ARGV / 3
"""

_append = kombu_redis.QoS.append
_ack = kombu_redis.QoS.ack
_reject = kombu_redis.QoS.reject
_close = kombu_redis.Channel.close


def _loads(text: Any) -> Any:
    """kombu's loads for its Redis transport (BRPOP's messages, among others), keeping the text of the last."""
    global _last_parsed
    if not isinstance(text, str):
        return _kombu_loads(text)
    # Only a text naming a type holds a value kombu's hook turns into an object (a datetime, a UUID...).
    parsed = _kombu_loads(text) if '"__type__"' in text else json.loads(text)
    _last_parsed = (parsed, text)
    return parsed


def _message_text(message: Any) -> str:
    """The message as JSON: the text it was parsed from if that is at hand, else encoded anew."""
    parsed, text = _last_parsed
    return text if parsed is message._raw else dumps(message._raw)


class Writer:
    """The queued bookkeeping writes of one channel, written once a turn."""

    def __init__(self, channel: Any, hub: Any) -> None:
        self.channel = channel
        self.hub = hub
        self.loop_thread = hub._loop_thread
        self.pending: list[tuple[Any, ...]] = []
        hub.on_tick.add(self.flush)

    def queue(self, *command: Any) -> None:
        self.pending.append(command)

    def flush(self) -> None:
        """Write what this turn queued, in one pipeline (the hub's on_tick, and before a record is read)."""
        if not self.pending:
            return
        commands, self.pending = self.pending, []
        try:
            # The channel's client, as kombu's own writes use it: redis-py's retries ride out a blip,
            # and a channel closed under a late ack says so (appserver/app.py).
            with self.channel.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                replies = pipe.execute(raise_on_error=False)
                full = [c for c, reply in zip(commands, replies, strict=True) if isinstance(reply, _FULL)]
                if full:
                    _record_while_full(client, commands, full)
        except kombu_redis.redis.RedisError as exc:
            # As when kombu's own write fails: the messages recorded come back after a lease (their
            # ledger records answered), those not recorded are the sweep's.
            log.warning("kombu's records of %d held messages could not be written: %s", len(commands), exc)
            return
        for reply in replies:
            if isinstance(reply, Exception) and not isinstance(reply, _FULL):
                log.warning("kombu's record of a held message was refused: %s", reply)

    def close(self) -> None:
        self.hub.on_tick.discard(self.flush)
        self.flush()


def _record_while_full(client: Any, commands: list[tuple[Any, ...]], refused: list[tuple[Any, ...]]) -> None:
    """Write again, through RECORD_WHILE_FULL, the records a full Redis refused of messages still held."""
    let_go = {command[2] for command in commands if command[0] == "ZREM"}
    records = [command for command in refused if command[0] == "HSET" and command[2] not in let_go]
    if not records:
        return
    index = next(command[1] for command in commands if command[0] == "ZADD")
    now = time.time()
    args = [value for _, _, tag, record in records for value in (now, tag, record)]
    try:
        client.register_script(RECORD_WHILE_FULL)(keys=[index, records[0][1]], args=args)
    except kombu_redis.redis.RedisError as exc:  # a Redis older than 7.0 knows no allow-oom
        log.warning("Redis is full, %d messages run unrecorded by kombu: %s", len(records), exc)


def writer(channel: Any) -> Writer | None:
    """The channel's writer when called on its event loop's thread and the writes can go raw, else None."""
    found = channel.__dict__.get("_wxrelay_writer")
    if found is not None:
        return found if found.loop_thread == threading.get_ident() else None
    if channel.closed:
        return None  # kombu's own write says the connection is gone
    hub = get_event_loop()
    if hub is None or getattr(hub, "_loop_thread", None) != threading.get_ident():
        return None
    if channel.global_keyprefix:
        return None  # kombu prefixes its keys: its own writes know how
    found = channel.__dict__["_wxrelay_writer"] = Writer(channel, hub)
    return found


def _queued_append(qos: Any, message: Any, delivery_tag: str) -> None:
    out = writer(qos.channel)
    if out is None:
        _append(qos, message, delivery_tag)
        return
    delivery = message.delivery_info
    # What kombu writes, dumps([payload, exchange, routing_key]), with the payload's text as it came.
    record = f"[{_message_text(message)}, {json.dumps(delivery['exchange'])}, {json.dumps(delivery['routing_key'])}]"
    out.queue("ZADD", qos.unacked_index_key, time.time(), delivery_tag)
    out.queue("HSET", qos.unacked_key, delivery_tag, record)
    kombu_virtual.QoS.append(qos, message, delivery_tag)


def _queued_ack(qos: Any, delivery_tag: str) -> None:
    out = writer(qos.channel)
    if out is None:
        _ack(qos, delivery_tag)
        return
    out.queue("ZREM", qos.unacked_index_key, delivery_tag)
    out.queue("HDEL", qos.unacked_key, delivery_tag)
    kombu_virtual.QoS.ack(qos, delivery_tag)


def _reject_after_writes(qos: Any, delivery_tag: str, requeue: bool = False) -> None:
    # A message given back is found by its record: it must be there first.
    found = qos.channel.__dict__.get("_wxrelay_writer")
    if found is not None:
        found.flush()
    if not requeue:
        _reject(qos, delivery_tag)
        return
    # kombu gives a rejected message back on the left, behind every message queued since; on the right, as
    # its restore does, it runs next, and the ledger's sweep finds it among the oldest (common/ledger.py).
    qos.restore_by_tag(delivery_tag)
    kombu_virtual.QoS.ack(qos, delivery_tag)


def _close_after_writes(channel: Any) -> None:
    found = channel.__dict__.pop("_wxrelay_writer", None)
    if found is not None:
        try:
            found.close()
        except Exception as exc:  # noqa: BLE001 - the channel must close all the same
            log.warning("kombu's records of held messages not written at close: %s", exc)
    _close(channel)


kombu_redis.loads = _loads
kombu_redis.QoS.append = _queued_append
kombu_redis.QoS.ack = _queued_ack
kombu_redis.QoS.reject = _reject_after_writes
kombu_redis.Channel.close = _close_after_writes
