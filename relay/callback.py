"""The callback URL WeChat calls: GET to verify the URL, POST to deliver.

Served as a Tornado message delegate, below RequestHandler: a delivery is
held for seconds, a thousand at once, and a RequestHandler brings objects of
its own to each (its UI namespaces, header and transform lists, routing
delegates) that the garbage collector walks again and again: measured, a held
delivery kept some 110 objects with it and 86 without. The rest of the relay's URLs (/healthz,
/metrics) keep RequestHandler (relay/app.py routes between them).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import TypeVar
from urllib.parse import parse_qsl

from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPMessageDelegate,
    RequestStartLine,
    ResponseStartLine,
    format_timestamp,
)

from common import ledger
from common.accounts import DEFAULT, WECOM
from common.log_format import about
from common.metric_child import child
from relay.context import Relay
from relay.dispatch import HangUp
from relay.metrics import MESSAGES, REJECTED, REPLY_SECONDS, VERIFIED
from relay.routes import Route
from relay.seen_signatures import SignatureUse, use_of
from wechat.exceptions import DecryptError, ForbiddenXMLError, SignatureError, XMLError
from wechat.parser import dedupe_key, parse_xml
from wechat.replies import Text
from wechat.signature import check_signature

log = logging.getLogger("wxrelay.relay")
T = TypeVar("T")
# How a delivery ends when its message's reply will go by the late path (relay/dispatch.py's Outcome.how).
LATE_OUTCOMES = ("success", "late", "spooled")
TEXT = "text/plain; charset=utf-8"
XML = "application/xml; charset=utf-8"
# What a client's number may be: str.isdigit() also passes '²' and other
# digits int() cannot read, and int() refuses more than 4,300 digits.
DECIMAL = re.compile(r"[0-9]{1,18}")


class Rejected(Exception):
    def __init__(self, status: int, reason: str, text: str) -> None:
        super().__init__(text)
        self.status, self.reason, self.text = status, reason, text


def decimal(text: str) -> int | None:
    """A client's number in ASCII digits; None for anything else."""
    return int(text) if DECIMAL.fullmatch(text) else None


class HTTPDate:
    """The Date header, formatted once a second rather than once a response."""

    def __init__(self) -> None:
        self._second = 0
        self._text = ""

    def __str__(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._text = now, format_timestamp(now)
        return self._text


DATE = HTTPDate()


class Callback(HTTPMessageDelegate):
    """One request to the callback URL of the account `name` (None: the account `default`), from `peer`."""

    def __init__(self, relay: Relay, connection: HTTPConnection, peer: str, name: str | None) -> None:
        self.relay = relay
        self.config = relay.settings
        self.connection = connection
        self.peer = peer
        self.name = name or DEFAULT
        self.method = self.path = ""
        self.chunks: list[bytes] = []
        self.size = 0
        self.hung_up = HangUp()
        self.answered = False
        self.body_read = False
        self.route: Route | None = None
        self.task: asyncio.Task[None] | None = None
        # WeChat hanging up while the reply is awaited ends the wait (relay/dispatch.py).
        connection.set_close_callback(self.on_connection_close)

    # -- what Tornado calls ---------------------------------------------------------------------------------

    def headers_received(self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders) -> None:
        # Checked before the body is read: an unknown, unsigned or oversize
        # request costs us nothing but its headers.
        assert isinstance(start_line, RequestStartLine)
        self.method = method = start_line.method
        self.path, _, query = start_line.path.partition("?")
        route = self.relay.routes.get(self.name)
        if route is None:
            self.respond(404, "not found")
            return
        self.route = route
        self.wecom = route.account.kind == WECOM
        try:
            if method not in ("GET", "POST"):
                raise Rejected(405, "method", "method not allowed")
            self.query = self.parse_query(query)
            if not self.relay.sources.admits(self.peer, headers):
                raise Rejected(403, "source_address", "source address not allowed")
            self.check_signature()
            if method == "POST" and not self.encrypted and "plain" not in route.account.modes:
                raise Rejected(403, "plaintext", "plaintext messages are refused: use safe mode")
            # Any other Content-Length is Tornado's to refuse (400).
            length = decimal(headers.get("Content-Length", ""))
            if length is not None and length > self.config.max_body:
                raise Rejected(413, "body_too_large", "request body too large")
        except Rejected as rejected:
            self.reject(rejected)
            return
        # Chunked bodies are counted in data_received; this is only the
        # point past which Tornado drops the connection by itself.
        self.connection.set_max_body_size(4 * self.config.max_body)  # type: ignore[attr-defined]

    def data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size <= self.config.max_body and not self.answered:
            self.chunks.append(chunk)

    def finish(self) -> None:
        self.body_read = True
        if self.answered:
            return
        self.task = asyncio.ensure_future(self.post() if self.method == "POST" else self.get())
        self.task.add_done_callback(self.failed)

    def on_connection_close(self) -> None:
        self.hung_up.set()

    # -- the request ----------------------------------------------------------------------------------------

    @staticmethod
    def parse_query(query: str) -> dict[str, str]:
        """Each argument's last value, as RequestHandler's get_query_argument takes it."""
        try:
            return dict(parse_qsl(query, keep_blank_values=True, errors="strict"))
        except UnicodeDecodeError:
            raise Rejected(400, "malformed_query", "invalid query string") from None

    def argument(self, name: str) -> str:
        """A query argument, stripped; '' when absent."""
        return self.query.get(name, "").strip()

    @property
    def encrypted(self) -> bool:
        # A WeCom app's messages are always encrypted, and say nothing of it in the URL.
        return self.wecom or (self.argument("encrypt_type") or "raw") == "aes"

    def check_signature(self) -> None:
        """The URL's signature, and its timestamp's age. A WeCom app signs only
        with msg_signature, over the body's Encrypt (or echostr): checked as it is decrypted."""
        timestamp = self.argument("timestamp")
        if not self.wecom:
            assert self.route is not None
            try:
                check_signature(self.route.account.token, self.argument("signature"), timestamp, self.argument("nonce"))
            except SignatureError:
                raise Rejected(403, "signature", "invalid signature") from None
        seconds = decimal(timestamp)
        if seconds is None or abs(time.time() - seconds) > self.config.timestamp_window:
            raise Rejected(403, "timestamp", "stale timestamp")

    # -- the answers ----------------------------------------------------------------------------------------

    def respond(self, status: int, body: str, content_type: str = TEXT) -> None:
        if self.answered:
            return
        self.answered = True
        data = body.encode()
        headers = HTTPHeaders()
        headers["Content-Type"] = content_type
        headers["Content-Length"] = str(len(data))
        headers["Date"] = str(DATE)
        # The echoed echostr is the caller's text: a browser must not take it for HTML.
        headers["X-Content-Type-Options"] = "nosniff"
        if not self.body_read:
            # Tornado closes a connection whose body it did not read: said, or
            # nginx keeps it for the next request (a valid one) and gets a reset.
            headers["Connection"] = "close"
        connection = self.connection
        connection.set_close_callback(None)
        # An answer to HEAD has no body: Tornado refuses to write one, and drops the connection.
        body = None if self.method == "HEAD" else data
        connection.write_headers(ResponseStartLine("HTTP/1.1", status, HTTPStatus(status).phrase), headers, body)
        connection.finish()

    def reject(self, rejected: Rejected) -> None:
        child(REJECTED, self.route.account.name if self.route else self.name, rejected.reason).inc()
        self.respond(rejected.status, rejected.text)

    def failed(self, task: asyncio.Task[None]) -> None:
        """A fault of ours: logged with its traceback here, never shown to the client."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("callback %s %s failed", self.method, self.path, exc_info=task.exception())
        if not self.hung_up.is_set():
            self.respond(500, "internal error")

    async def get(self) -> None:
        try:
            echostr = self.argument("echostr")
            if not echostr:
                raise Rejected(400, "missing_echostr", "missing echostr")
            if self.wecom:
                echostr = self.decrypt_echostr(echostr)
        except Rejected as rejected:
            self.reject(rejected)
            return
        assert self.route is not None
        child(VERIFIED, self.route.account.name).inc()
        self.respond(200, echostr)

    def decrypt_echostr(self, echostr: str) -> str:
        """WeCom's URL verification: echostr is encrypted, and answered decrypted."""
        assert self.route is not None and self.route.crypto is not None  # a WeCom app has its key
        return self.unseal(self.route.crypto.decrypt_echostr, echostr, "echostr")

    def unseal(self, decrypt: Callable[[str, str, str, str], T], sealed: str, what: str) -> T:
        """`decrypt(sealed, msg_signature, timestamp, nonce)`, its failures as the client's answers."""
        try:
            return decrypt(sealed, self.argument("msg_signature"), self.argument("timestamp"), self.argument("nonce"))
        except SignatureError:
            raise Rejected(403, "signature", "invalid msg_signature") from None
        except DecryptError:
            raise Rejected(400, "decrypt", f"cannot decrypt {what}") from None

    async def post(self) -> None:
        started = time.monotonic()
        route = self.route
        assert route is not None
        try:
            xml, aes_key = self.read_message()
        except Rejected as rejected:
            self.reject(rejected)
            return
        account = route.account.name
        key = ledger.message_key(account, dedupe_key(self.fields))
        # Plaintext's signature does not cover the body: one signature, one body (relay/seen_signatures.py).
        signature = self.signature_use() if aes_key is None else None
        try:
            outcome = await self.relay.dispatcher.dispatch(route, key, xml, self.hung_up, signature)
        except (OSError, sqlite3.Error) as exc:
            # Neither Redis nor the spool could keep it: WeChat must try again.
            log.error("cannot keep message %s: %s", key, exc, extra=about(key, "unavailable", started))
            child(MESSAGES, account, "unavailable").inc()
            self.respond(503, "service unavailable")
            return
        if outcome.how == "replayed":
            self.reject(Rejected(403, "replayed", "signature already used with another body"))
            return
        child(MESSAGES, account, outcome.how).inc()
        if log.isEnabledFor(logging.DEBUG):  # a line a message: never built at INFO
            log.debug("message %s: %s", key, outcome.how, extra=about(key, outcome.how, started))
        if outcome.reply is None:
            return
        child(REPLY_SECONDS, account).observe(time.monotonic() - started)
        reply = outcome.reply
        if not reply and outcome.how in LATE_OUTCOMES and route.account.keeps_for_pickup:
            reply = self.pickup_notice(route)
        self.answer(route, reply, aes_key)

    def pickup_notice(self, route: Route) -> str:
        """The reply will be kept for the user's next message: tell them to send one."""
        user, account_id = str(self.fields.get("FromUserName", "")), str(self.fields.get("ToUserName", ""))
        return Text(route.account.pickup_text).render(user, account_id)

    def signature_use(self) -> SignatureUse:
        timestamp, nonce, signature = self.argument("timestamp"), self.argument("nonce"), self.argument("signature")
        return use_of(timestamp, nonce, signature, b"".join(self.chunks), self.config.timestamp_window)

    def read_message(self) -> tuple[str, bytes | None]:
        """Parse (and decrypt) the body: the message XML and the AES key that worked."""
        if self.size > self.config.max_body:
            raise Rejected(413, "body_too_large", "request body too large")
        body = b"".join(self.chunks)
        try:
            self.fields = parse_xml(body)
            if not self.encrypted:
                return body.decode(), None
            return self.decrypt()
        except ForbiddenXMLError:
            raise Rejected(400, "hostile_xml", "forbidden XML") from None
        except (XMLError, UnicodeDecodeError):
            raise Rejected(400, "malformed_xml", "malformed XML") from None

    def decrypt(self) -> tuple[str, bytes]:
        assert self.route is not None
        crypto = self.route.crypto
        if crypto is None:
            raise Rejected(400, "not_configured", "encrypted messages are not configured")
        encrypt = self.fields.get("Encrypt")
        if not isinstance(encrypt, str) or not encrypt:
            raise Rejected(400, "malformed_xml", "missing Encrypt")
        # Compatible mode sends the message in the clear beside its Encrypt.
        mode = "compat" if "MsgType" in self.fields else "safe"
        if mode not in self.route.account.modes:
            raise Rejected(403, "mode", f"{mode} mode is not accepted on this URL")
        xml, key = self.unseal(crypto.decrypt_message, encrypt, "Encrypt")
        self.fields = parse_xml(xml)
        return xml, key

    def answer(self, route: Route, reply: str, key: bytes | None) -> None:
        if not reply:
            self.respond(200, "success")
            return
        if key is not None and route.crypto is not None:
            reply = route.crypto.encrypt_reply(reply, self.argument("nonce"), key=key)
        self.respond(200, reply, XML)
