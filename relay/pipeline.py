"""The ledger's hot path on one auto-pipelined Redis connection per relay process.

Every message makes two ledger calls (claim, then take). Through redis-py's
asyncio client each costs ~130 µs of CPU (a pooled connection checked out and
back, retry and timeout wrappers, instrumentation hooks): a third of the
relay's CPU. Here the calls of all the requests one IOLoop turn handles go
out in a single write on a single connection, and the replies, which Redis
sends in order, resolve them in order: ~15 µs a call. The rest of the relay
(the reply channel, /healthz, look-ups after a reconnect) keeps redis-py.

Errors keep redis-py's types, so callers see no difference: a reply error is
a ResponseError, a lost or refused connection a ConnectionError (both
RedisError); a lost connection fails the calls in flight and the next call
connects again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Any

import hiredis
from redis.connection import parse_url
from redis.exceptions import ConnectionError, ResponseError


def _pack(args: tuple[Any, ...]) -> bytes:
    """A command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: PipelinedRedis) -> None:
        self.owner = owner
        self.reader = hiredis.Reader(encoding="utf-8", replyError=ResponseError)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.owner.waiting
        while (reply := self.reader.gets()) is not False:
            future = waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.lost(self, exc)


class PipelinedRedis:
    """One connection; the commands of many coroutines written together."""

    def __init__(self, url: str, connect_timeout: float = 2.0) -> None:
        options = parse_url(url)
        self._host = options.get("host", "127.0.0.1")
        self._port = int(options.get("port", 6379))
        self._setup: list[tuple[Any, ...]] = []
        if options.get("password"):
            user = options.get("username")
            self._setup.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if int(options.get("db", 0) or 0):
            self._setup.append(("SELECT", int(options["db"])))
        self._connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        # Commands for the current connection not written yet; lost() empties it.
        self._buffer: list[bytes] = []
        self._flush_scheduled = False
        self.waiting: deque[asyncio.Future[Any]] = deque()

    async def evalsha(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await self.call(*command)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # Redis restarted and forgot the script: teach it again, once.
        await self.call("SCRIPT", "LOAD", script.source)
        return await self.call(*command)

    async def call(self, *args: Any) -> Any:
        protocol = self._protocol or await self._connect()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._send(protocol, future, _pack(args))
        reply = await future
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def _send(self, protocol: _Protocol, future: asyncio.Future[Any], command: bytes) -> None:
        if protocol is not self._protocol:  # lost while this call waited to connect
            future.set_exception(ConnectionError("connection to Redis lost"))
            return
        self.waiting.append(future)
        self._buffer.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write what this IOLoop turn asked for, in one go."""
        self._flush_scheduled = False
        data, self._buffer = b"".join(self._buffer), []
        protocol = self._protocol
        if data and protocol is not None and protocol.transport is not None:
            protocol.transport.write(data)

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), self._host, self._port), self._connect_timeout
            )
        except (TimeoutError, OSError) as exc:
            raise ConnectionError(f"cannot connect to Redis at {self._host}:{self._port}: {exc}") from None
        self._protocol = protocol
        # AUTH and SELECT go first on the wire: every command after them runs authenticated.
        setup = [loop.create_future() for _ in self._setup]
        for future, command in zip(setup, self._setup, strict=True):
            self._send(protocol, future, _pack(command))
        for future in setup:
            reply = await future
            if isinstance(reply, ResponseError):
                self.close()
                raise reply
        return protocol

    def lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._buffer = []
        waiting, self.waiting = self.waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(ConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def close(self) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
        if protocol is not None:
            self.lost(protocol, None)
