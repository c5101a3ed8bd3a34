"""The callback URL WeChat calls: GET to verify the URL, POST to deliver."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

from tornado.web import stream_request_body

from relay.context import Relay
from relay.handler import RelayHandler
from relay.metrics import MESSAGES, REJECTED, REPLY_SECONDS, VERIFIED
from wechat.exceptions import DecryptError, ForbiddenXMLError, SignatureError, XMLError
from wechat.parser import dedupe_key, parse_xml
from wechat.signature import check_signature

log = logging.getLogger("wxrelay.relay")


class Rejected(Exception):
    def __init__(self, status: int, reason: str, text: str) -> None:
        super().__init__(text)
        self.status, self.reason, self.text = status, reason, text


@stream_request_body
class CallbackHandler(RelayHandler):
    def initialize(self, relay: Relay) -> None:
        self.relay = relay
        self.config = relay.settings
        self.chunks: list[bytes] = []
        self.size = 0
        self.hung_up = asyncio.Event()

    def prepare(self) -> None:
        # Checked before the body is read: an unsigned or oversize request
        # costs us nothing but its headers.
        try:
            if not self.relay.sources.admits(self.request):
                raise Rejected(403, "source_address", "source address not allowed")
            self.check_signature()
            if self.request.method == "POST" and self.config.require_encryption and not self.encrypted:
                raise Rejected(403, "plaintext", "plaintext messages are refused: use safe mode")
            length = self.request.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > self.config.max_body:
                raise Rejected(413, "body_too_large", "request body too large")
        except Rejected as rejected:
            self.reject(rejected)
            return
        # Chunked bodies are counted in data_received; this is only the
        # point past which Tornado drops the connection by itself.
        self.request.connection.set_max_body_size(4 * self.config.max_body)

    def data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size <= self.config.max_body:
            self.chunks.append(chunk)

    @property
    def encrypted(self) -> bool:
        return self.get_query_argument("encrypt_type", "raw") == "aes"

    def on_connection_close(self) -> None:
        self.hung_up.set()

    def check_signature(self) -> None:
        timestamp = self.get_query_argument("timestamp", "")
        try:
            check_signature(
                self.config.token,
                self.get_query_argument("signature", ""),
                timestamp,
                self.get_query_argument("nonce", ""),
            )
        except SignatureError:
            raise Rejected(403, "signature", "invalid signature") from None
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > self.config.timestamp_window:
            raise Rejected(403, "timestamp", "stale timestamp")

    def reject(self, rejected: Rejected) -> None:
        REJECTED.labels(rejected.reason).inc()
        self.set_status(rejected.status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(rejected.text)

    def get(self) -> None:
        echostr = self.get_query_argument("echostr", "")
        if not echostr:
            self.reject(Rejected(400, "missing_echostr", "missing echostr"))
            return
        VERIFIED.inc()
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(echostr)

    async def post(self) -> None:
        started = time.monotonic()
        try:
            xml, key = self.read_message()
            if key is None and not await self.first_use_of_signature():
                raise Rejected(403, "replayed", "signature already used with another body")
        except Rejected as rejected:
            self.reject(rejected)
            return
        try:
            outcome = await self.relay.dispatcher.dispatch(dedupe_key(self.fields), xml, self.hung_up)
        except (OSError, sqlite3.Error) as exc:
            # Neither Redis nor the spool could keep it: WeChat must try again.
            log.error("cannot keep message %s: %s", dedupe_key(self.fields), exc)
            MESSAGES.labels("unavailable").inc()
            self.set_status(503)
            self.finish("service unavailable")
            return
        MESSAGES.labels(outcome.how).inc()
        if outcome.reply is None:
            return
        REPLY_SECONDS.observe(time.monotonic() - started)
        self.answer(outcome.reply, key)

    async def first_use_of_signature(self) -> bool:
        """Plaintext's signature does not cover the body: one signature, one body."""
        return await self.relay.signatures.admits(
            self.get_query_argument("timestamp", ""),
            self.get_query_argument("nonce", ""),
            self.get_query_argument("signature", ""),
            b"".join(self.chunks),
        )

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
        except XMLError:
            raise Rejected(400, "malformed_xml", "malformed XML") from None

    def decrypt(self) -> tuple[str, bytes]:
        crypto = self.relay.crypto
        if crypto is None:
            raise Rejected(400, "not_configured", "encrypted messages are not configured")
        encrypt = self.fields.get("Encrypt")
        if not isinstance(encrypt, str) or not encrypt:
            raise Rejected(400, "malformed_xml", "missing Encrypt")
        try:
            xml, key = crypto.decrypt_message(
                encrypt,
                self.get_query_argument("msg_signature", ""),
                self.get_query_argument("timestamp", ""),
                self.get_query_argument("nonce", ""),
            )
        except SignatureError:
            raise Rejected(403, "signature", "invalid msg_signature") from None
        except DecryptError:
            raise Rejected(400, "decrypt", "cannot decrypt") from None
        self.fields = parse_xml(xml)
        return xml, key

    def answer(self, reply: str, key: bytes | None) -> None:
        if not reply:
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("success")
            return
        if key is not None and self.relay.crypto is not None:
            reply = self.relay.crypto.encrypt_reply(reply, self.get_query_argument("nonce", ""), key=key)
        self.set_header("Content-Type", "application/xml; charset=utf-8")
        self.finish(reply)
