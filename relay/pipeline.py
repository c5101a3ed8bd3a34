"""The ledger's hot path on one auto-pipelined Redis connection per relay process.

Every message makes two ledger calls (claim, then take). Through redis-py's
asyncio client each costs ~130 µs of CPU (a pooled connection checked out and
back, retry and timeout wrappers, instrumentation hooks): a third of the
relay's CPU. Here the calls of all the requests one IOLoop turn handles go
out in a single write on a single connection, and the replies, which Redis
sends in order, resolve them in order: ~15 µs a call. The rest of the relay
(the reply channel, /healthz, look-ups after a reconnect) keeps redis-py.

Errors keep redis-py's types, so callers see no difference: a reply error is
a ResponseError, a lost or refused connection a ConnectionError, a call
unanswered within `timeout` a TimeoutError (all RedisError); a lost
connection fails the calls in flight and the next call connects again.

What redis-py gives every connection this one has too: a deadline on every
call (one timer for the whole connection, armed for the oldest call still
waiting: replies come in order, so the oldest is the one that is late),
TCP keepalive, and redis://, rediss:// (TLS) and unix:// URLs.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections import deque
from typing import Any

import hiredis
from redis.connection import parse_url
from redis.exceptions import ConnectionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# A peer that vanished without a word is noticed within a minute, not hours.
_KEEPALIVE = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


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
            future, _ = waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.lost(self, exc)


class PipelinedRedis:
    """One connection; the commands of many coroutines written together."""

    def __init__(self, url: str, connect_timeout: float = 2.0, timeout: float = 1.0) -> None:
        try:
            options = parse_url(url)
        except ValueError as exc:
            raise ValueError(f"{url.partition('://')[0]}:// is not a Redis URL the relay supports: {exc}") from None
        self._path: str | None = options.get("path")
        self._host = options.get("host", "127.0.0.1")
        self._port = int(options.get("port", 6379))
        self._ssl = _tls_context(options) if url.startswith("rediss://") else None
        self._setup: list[tuple[Any, ...]] = []
        if options.get("password"):
            user = options.get("username")
            self._setup.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if int(options.get("db", 0) or 0):
            self._setup.append(("SELECT", int(options["db"])))
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        # Commands for the current connection not written yet; lost() empties it.
        self._buffer: list[bytes] = []
        self._flush_scheduled = False
        # Each call waiting for its reply, with its deadline, oldest first.
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def address(self) -> str:
        return self._path or f"{self._host}:{self._port}"

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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        self.waiting.append((future, deadline))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._check_deadline)
        self._buffer.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _check_deadline(self) -> None:
        """The oldest call waiting is past its deadline: the connection is stuck."""
        self._watchdog = None
        if not self.waiting:
            return
        future, deadline = self.waiting[0]
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:
            self._watchdog = loop.call_at(deadline, self._check_deadline)
            return
        protocol = self._protocol
        if not future.done():
            future.set_exception(RedisTimeoutError(f"Redis at {self.address} did not answer within {self._timeout} s"))
        # Its reply, should it come, would be taken for the next call's: start afresh.
        if protocol is not None:
            self.lost(protocol, RedisTimeoutError("a call timed out"))
            if protocol.transport is not None:
                protocol.transport.abort()

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
        if self._path is not None:
            connecting = loop.create_unix_connection(lambda: _Protocol(self), self._path)
        else:
            connecting = loop.create_connection(
                lambda: _Protocol(self), self._host, self._port, ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )  # fmt: skip
        try:
            transport, protocol = await asyncio.wait_for(connecting, self._connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise ConnectionError(f"cannot connect to Redis at {self.address}: {exc or 'timed out'}") from None
        _keepalive(transport.get_extra_info("socket"))
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
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting, self.waiting = self.waiting, deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(ConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def close(self) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
        if protocol is not None:
            self.lost(protocol, None)


def _keepalive(sock: socket.socket | None) -> None:
    if sock is None or sock.family == socket.AF_UNIX:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE.items():
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS a rediss:// URL asks for, with redis-py's query options."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    reqs = str(options.get("ssl_cert_reqs", "required")).lower()
    if reqs not in _CERT_REQS:
        raise ValueError(f"rediss://: ssl_cert_reqs must be none, optional or required, not {reqs!r}")
    check_hostname = str(options.get("ssl_check_hostname", reqs != "none")).lower() in ("true", "1", "yes")
    context.check_hostname = check_hostname and reqs != "none"
    context.verify_mode = _CERT_REQS[reqs]
    return context
