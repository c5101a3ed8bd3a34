"""The ledger's hot path on one auto-pipelined Redis connection per relay process.

Every message makes two ledger calls (claim, then take). Through redis-py's
asyncio client each costs ~130 µs of CPU (a pooled connection checked out and
back, retry and timeout wrappers, instrumentation hooks): a third of the
relay's CPU. Here the calls of all the requests one IOLoop turn handles go
out in a single write on a single connection, and the replies, which Redis
sends in order, resolve them in order: ~15 µs a call. The reply channel's
subscriber is one of these too (its messages go to `on_push`): through
redis-py's PubSub each notice cost ~40 µs, and every relay reads every
notice. The rest of the relay (/healthz, look-ups after a reconnect) keeps
redis-py.

Errors keep redis-py's types, so callers see no difference: a reply error is
a ResponseError, a lost or refused connection a ConnectionError, a call
unanswered within `timeout` a TimeoutError (all RedisError); a lost
connection fails the calls in flight and the next call connects again.

What redis-py gives every connection this one has too: a deadline on every
call, TCP keepalive and TCP_NODELAY, and redis://, rediss:// (TLS) and
unix:// URLs with redis-py's query options (db, password, ssl_*); any other
URL is refused when the object is made, so a relay does not start with it.

The deadline costs a clock read per write, nothing per call. Replies come
in order, so the oldest call waiting is the one that is late: each write
records its deadline, and one timer per connection, armed for the oldest
write not fully answered, checks it. A call that times out closes the
connection, failing the others in flight: its reply, should it come, would
be taken for the next call's.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
from redis.connection import parse_url
from redis.exceptions import ConnectionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_SCHEMES = ("redis", "rediss", "unix")
# A peer that vanished without a word is noticed within a minute, not at the kernel's default two hours.
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
        owner = self.owner
        if owner._protocol is not self:  # given up on (timed out, closed): its replies answer no one now
            return
        self.reader.feed(data)
        waiting = owner.waiting
        # A reply nobody asked for (IndexError) or garbage (hiredis.ProtocolError) makes asyncio
        # close the transport, and connection_lost fails the calls: the stream is out of step.
        on_push = owner.on_push
        while (reply := self.reader.gets()) is not False:
            if on_push is not None and type(reply) is list and reply and reply[0] == "message":
                on_push(reply[1], reply[2])  # a subscriber's message: no call waits for it
                continue
            future = waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.lost(self, exc)


class PipelinedRedis:
    """One connection; the commands of many coroutines written together."""

    def __init__(self, url: str, connect_timeout: float = 2.0, timeout: float = 1.0) -> None:
        scheme, sep, _ = url.partition("://")
        if not sep or scheme not in _SCHEMES:
            # Only the scheme is named: the rest of a URL may hold a password.
            named = f"{scheme}://" if sep else "a URL without a scheme"
            raise ValueError(f"Redis URL scheme {named} is not supported: use redis://, rediss:// (TLS) or unix://")
        options = parse_url(url)
        self._path: str | None = options.get("path") if scheme == "unix" else None
        if scheme == "unix" and not self._path:
            raise ValueError("unix:// Redis URL names no socket path: unix:///path/to/redis.sock")
        self._host: str = options.get("host", "127.0.0.1")
        self._port = int(options.get("port", 6379))
        self._ssl = _tls_context(options) if scheme == "rediss" else None
        self._setup: list[tuple[Any, ...]] = []
        if options.get("password"):
            user = options.get("username")
            self._setup.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if int(options.get("db", 0) or 0):
            self._setup.append(("SELECT", int(options["db"])))
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        # The current connection's state, which lost() resets. Calls waiting for a reply, oldest first:
        self.waiting: deque[asyncio.Future[Any]] = deque()
        # ... their commands not written yet ...
        self._buffer: list[bytes] = []
        self._flush_scheduled = False
        # ... how many calls were written, and per write (calls written by its end, its deadline).
        self._written = 0
        self._writes: deque[tuple[int, float]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        # A subscriber's: called with (channel, data) for each message published to it, and with
        # the reason when the connection is lost (the subscription goes with it).
        self.on_push: Callable[[str, str], None] | None = None
        self.on_lost: Callable[[Exception | None], None] | None = None

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
        future: asyncio.Future[Any] = self._loop.create_future()  # type: ignore[union-attr]
        self._send(protocol, future, _pack(args))
        reply = await future
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def _send(self, protocol: _Protocol, future: asyncio.Future[Any], command: bytes) -> None:
        if protocol is not self._protocol:  # lost while this call waited to connect
            future.set_exception(ConnectionError(f"connection to Redis at {self.address} lost"))
            return
        self.waiting.append(future)
        self._buffer.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)  # type: ignore[union-attr]

    def _flush(self) -> None:
        """Write what this IOLoop turn asked for, in one go."""
        self._flush_scheduled = False
        protocol = self._protocol
        if not self._buffer or protocol is None or protocol.transport is None:
            return
        loop: asyncio.AbstractEventLoop = self._loop  # type: ignore[assignment]
        self._written += len(self._buffer)
        data, self._buffer = b"".join(self._buffer), []
        deadline = loop.time() + self._timeout
        self._writes.append((self._written, deadline))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._check_deadline)
        protocol.transport.write(data)

    def _check_deadline(self) -> None:
        self._watchdog = None
        # Every call ever queued on this connection, less those waiting, were answered.
        answered = self._written + len(self._buffer) - len(self.waiting)
        writes = self._writes
        while writes and writes[0][0] <= answered:
            writes.popleft()
        protocol = self._protocol
        if not writes or protocol is None:
            return
        loop: asyncio.AbstractEventLoop = self._loop  # type: ignore[assignment]
        deadline = writes[0][1]
        if loop.time() < deadline:
            self._watchdog = loop.call_at(deadline, self._check_deadline)
            return
        # Redis frozen, or a peer gone without a FIN: the oldest call is late.
        message = f"Redis at {self.address} did not answer within {self._timeout} s"
        future = self.waiting[0]
        if not future.done():
            future.set_exception(RedisTimeoutError(message))
        self.lost(protocol, RedisTimeoutError(message))
        if protocol.transport is not None:
            protocol.transport.abort()

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
        loop = self._loop = asyncio.get_running_loop()
        if self._path is not None:
            connecting = loop.create_unix_connection(lambda: _Protocol(self), self._path)
        else:
            connecting = loop.create_connection(
                lambda: _Protocol(self), self._host, self._port, ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )  # fmt: skip
        try:
            transport, protocol = await asyncio.wait_for(connecting, self._connect_timeout)
        except (TimeoutError, OSError) as exc:  # ssl.SSLError (a certificate refused) is an OSError
            raise ConnectionError(f"cannot connect to Redis at {self.address}: {exc or 'timed out'}") from None
        _tune(transport.get_extra_info("socket"))
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
        self._written = 0
        self._writes = deque()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting, self.waiting = self.waiting, deque()
        for future in waiting:
            if not future.done():  # an exception each: one raised in many tasks would gather all their tracebacks
                future.set_exception(ConnectionError(f"connection to Redis at {self.address} lost: {exc or 'closed'}"))
        if self.on_lost is not None:
            self.on_lost(exc)

    def close(self) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
        if protocol is not None:
            self.lost(protocol, None)


def _tune(sock: socket.socket | None) -> None:
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    # Each IOLoop turn's calls go out in one write already: Nagle would only hold it back.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE.items():
        if hasattr(socket, name):  # where the platform lacks one, its default stays
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS a rediss:// URL asks for, with redis-py's query options and defaults."""
    reqs = str(options.get("ssl_cert_reqs") or "required").lower()
    if reqs not in _CERT_REQS:
        raise ValueError(f"rediss:// URL: ssl_cert_reqs must be none, optional or required, not {reqs!r}")
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    # parse_url made ssl_check_hostname a bool, or None when empty; a certificate not checked has no name to check.
    context.check_hostname = options.get("ssl_check_hostname") is not False and reqs != "none"
    context.verify_mode = _CERT_REQS[reqs]
    return context
