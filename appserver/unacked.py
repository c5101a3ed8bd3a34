"""kombu's record of the messages a worker holds, written without waiting for Redis.

kombu's Redis transport records every message it takes from the queue as
unacknowledged (ZADD to the index, HSET of the message) and removes it when the
task is acknowledged (ZREM, HDEL): two MULTI/EXEC transactions a message, each
a blocking round trip through redis-py on the thread that runs the event loop,
which is also the thread that takes the next message. For a trivial bot they
were two fifths of the worker's CPU, and each one woke Redis and the worker
once more (across cores, a wake-up costs more than the write).

Here those writes are queued in the event loop's thread and written together,
in one packet on a connection of their own, once per turn of the loop (the hub's
on_tick, just before it polls): at load, the records of the messages one turn
took and the acknowledgements of those that finished since go out in one write.
Nobody waits for the replies: they are read, without blocking, at the next
write (or the next second), and only an error among them matters (logged). In
order on one connection, a message's record is always written before its removal.

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
back, the channel closing) first writes what is queued, and waits. Outside the
loop's thread, over TLS or with a key prefix, kombu's own writes run unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import hiredis
from kombu.asynchronous import get_event_loop
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from kombu.utils.json import dumps

# After appserver.app: its QoS.append (which survives a full Redis) is the fallback.
from appserver import app as _app  # noqa: F401

log = logging.getLogger("wxrelay.appserver")

# Replies not yet read are also read this often when nothing is written (an error logged soon).
DRAIN_INTERVAL = 1.0
# Redis away: writes are kept for when it is back (removals of finished messages among them), this many at
# most, and no connection is tried more often than this; the event loop must not wait on a Redis that is down.
KEEP = 20000
RETRY = 1.0

_kombu_loads = kombu_redis.loads
# The message the event loop's thread parsed last, and its text.
_last_parsed: tuple[Any, str] = (None, "")

_append = kombu_redis.QoS.append
_ack = kombu_redis.QoS.ack
_reject = kombu_redis.QoS.reject
_close = kombu_redis.Channel.close


def _pack(*args: Any) -> bytes:
    """One command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, float):
            arg = repr(arg).encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


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
    """The queued bookkeeping writes of one channel, and the connection they go out on."""

    def __init__(self, channel: Any, hub: Any) -> None:
        self.channel = channel
        self.hub = hub
        self.loop_thread = hub._loop_thread
        self.pending: list[bytes] = []
        self.unread = 0  # replies written for and not read yet
        self.connection: Any = None
        self.reader: Any = None
        self.failed_at = -RETRY
        hub.on_tick.add(self.flush)
        self._timer = hub.call_repeatedly(DRAIN_INTERVAL, self.drain)

    def queue(self, command: bytes) -> None:
        self.pending.append(command)

    def flush(self) -> None:
        """Write what this turn queued, in one packet (the hub's on_tick)."""
        if not self.pending:
            return
        self.drain()
        if self.connection is None and time.monotonic() - self.failed_at < RETRY:
            return
        try:
            connection = self._connection()
        except (OSError, kombu_redis.redis.RedisError) as exc:
            self._lost(exc)
            del self.pending[:-KEEP]
            return
        data, count = b"".join(self.pending), len(self.pending)
        self.pending = []
        try:
            connection._sock.sendall(data)
            self.unread += count
        except OSError as exc:
            # Written in part or not at all: Redis has the first of them or none; the rest are lost.
            self._lost(exc)

    def flush_and_wait(self) -> None:
        """Write what is queued and wait until Redis has done it: before anything reads the record."""
        self.flush()
        if self.connection is None or not self.unread:
            return
        sock = self.connection._sock  # its timeout (socket_timeout) bounds the wait
        try:
            while self.unread:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed by Redis")
                self._parse(data)
        except OSError as exc:
            self._lost(exc)

    def drain(self) -> None:
        """Read the replies that are there, without waiting; log any error among them."""
        if self.connection is None or not self.unread:
            return
        # With a timeout, Python's socket waits for data before reading; the descriptor itself
        # does not (Python sets it non-blocking to time its waits), so it is read directly.
        fd = self.connection._sock.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lost(exc)
                return
            if not data:
                self._lost(ConnectionError("closed by Redis"))
                return
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.unread -= 1
            if isinstance(reply, hiredis.ReplyError):
                if str(reply).startswith("OOM"):
                    log.warning("Redis is full, a message runs unrecorded by kombu: %s", reply)
                else:
                    log.warning("kombu's record of a held message was refused: %s", reply)

    def _connection(self) -> Any:
        if self.connection is None:
            pool = self.channel.pool
            options = {**pool.connection_kwargs, "socket_connect_timeout": 2, "socket_timeout": 5}
            connection = pool.connection_class(**options)
            connection.connect()  # AUTH and SELECT, as for any of kombu's connections
            self.connection, self.reader, self.unread = connection, hiredis.Reader(), 0
        return self.connection

    def _lost(self, exc: BaseException) -> None:
        if time.monotonic() - self.failed_at > 5:
            log.warning("kombu's records of held messages could not be written: %s", exc)
        self.failed_at = time.monotonic()
        connection, self.connection, self.unread = self.connection, None, 0
        if connection is not None:
            connection.disconnect()

    def close(self) -> None:
        self.hub.on_tick.discard(self.flush)
        self._timer.cancel()
        self.flush_and_wait()
        if self.connection is not None:
            self.connection.disconnect()
            self.connection = None


def writer(channel: Any) -> Writer | None:
    """The channel's writer when called on its event loop's thread and the writes can go raw, else None."""
    found = channel.__dict__.get("_wxrelay_writer")
    if found is not None:
        return found if found.loop_thread == threading.get_ident() else None
    hub = get_event_loop()
    if hub is None or getattr(hub, "_loop_thread", None) != threading.get_ident():
        return None
    if channel.global_keyprefix or issubclass(channel.pool.connection_class, kombu_redis.redis.SSLConnection):
        return None  # kombu prefixes keys, or TLS: a raw socket write will not do
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
    out.queue(_pack("ZADD", qos.unacked_index_key, time.time(), delivery_tag))
    out.queue(_pack("HSET", qos.unacked_key, delivery_tag, record))
    kombu_virtual.QoS.append(qos, message, delivery_tag)


def _queued_ack(qos: Any, delivery_tag: str) -> None:
    out = writer(qos.channel)
    if out is None:
        _ack(qos, delivery_tag)
        return
    out.queue(_pack("ZREM", qos.unacked_index_key, delivery_tag))
    out.queue(_pack("HDEL", qos.unacked_key, delivery_tag))
    kombu_virtual.QoS.ack(qos, delivery_tag)


def _reject_after_writes(qos: Any, delivery_tag: str, requeue: bool = False) -> None:
    # A message given back is found by its record: it must be there first.
    found = qos.channel.__dict__.get("_wxrelay_writer")
    if found is not None:
        found.flush_and_wait()
    _reject(qos, delivery_tag, requeue)


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
