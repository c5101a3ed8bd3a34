"""The callback URL WeChat calls: GET to verify the URL, POST to deliver."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from tornado.web import stream_request_body

from common import ledger
from common.accounts import DEFAULT, WECOM
from relay.context import Relay
from relay.dispatch import HangUp
from relay.handler import RelayHandler
from relay.metrics import MESSAGES, REJECTED, REPLY_SECONDS, VERIFIED
from relay.routes import Route
from wechat.exceptions import DecryptError, ForbiddenXMLError, SignatureError, XMLError
from wechat.parser import dedupe_key, parse_xml
from wechat.replies import Text
from wechat.signature import check_signature

log = logging.getLogger("wxrelay.relay")
T = TypeVar("T")
# How a delivery ends when its message's reply will go by the late path (relay/dispatch.py's Outcome.how).
LATE_OUTCOMES = ("success", "late", "spooled")


class Rejected(Exception):
    def __init__(self, status: int, reason: str, text: str) -> None:
        super().__init__(text)
        self.status, self.reason, self.text = status, reason, text


@stream_request_body
class CallbackHandler(RelayHandler):
    route: Route

    def initialize(self, relay: Relay) -> None:
        self.relay = relay
        self.config = relay.settings
        self.chunks: list[bytes] = []
        self.size = 0
        self.hung_up = HangUp()

    def prepare(self) -> None:
        # Checked before the body is read: an unknown, unsigned or oversize
        # request costs us nothing but its headers.
        route = self.relay.routes.get(self.path_args[0] if self.path_args and self.path_args[0] else DEFAULT)
        if route is None:
            self.set_status(404)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("not found")
            return
        self.route = route
        self.wecom = route.account.kind == WECOM
        try:
            if not self.relay.sources.admits(self.request):
                raise Rejected(403, "source_address", "source address not allowed")
            self.check_signature()
            if self.request.method == "POST" and not self.encrypted and "plain" not in route.account.modes:
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
        # A WeCom app's messages are always encrypted, and say nothing of it in the URL.
        return self.wecom or self.get_query_argument("encrypt_type", "raw") == "aes"

    def on_connection_close(self) -> None:
        self.hung_up.set()

    def check_signature(self) -> None:
        """The URL's signature, and its timestamp's age. A WeCom app signs only
        with msg_signature, over the body's Encrypt (or echostr): checked as it is decrypted."""
        timestamp = self.get_query_argument("timestamp", "")
        if not self.wecom:
            try:
                check_signature(
                    self.route.account.token,
                    self.get_query_argument("signature", ""),
                    timestamp,
                    self.get_query_argument("nonce", ""),
                )
            except SignatureError:
                raise Rejected(403, "signature", "invalid signature") from None
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > self.config.timestamp_window:
            raise Rejected(403, "timestamp", "stale timestamp")

    def reject(self, rejected: Rejected) -> None:
        REJECTED.labels(self.route.account.name, rejected.reason).inc()
        self.set_status(rejected.status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(rejected.text)

    # The URL's account name is Tornado's path argument; prepare() has found its route.
    def get(self, _name: str | None = None) -> None:
        echostr = self.get_query_argument("echostr", "")
        if not echostr:
            self.reject(Rejected(400, "missing_echostr", "missing echostr"))
            return
        if self.wecom:
            try:
                echostr = self.decrypt_echostr(echostr)
            except Rejected as rejected:
                self.reject(rejected)
                return
        VERIFIED.labels(self.route.account.name).inc()
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(echostr)

    def decrypt_echostr(self, echostr: str) -> str:
        """WeCom's URL verification: echostr is encrypted, and answered decrypted."""
        assert self.route.crypto is not None  # a WeCom app has its key (common/accounts.py)
        return self.unseal(self.route.crypto.decrypt_echostr, echostr, "echostr")

    def unseal(self, decrypt: Callable[[str, str, str, str], T], sealed: str, what: str) -> T:
        """`decrypt(sealed, msg_signature, timestamp, nonce)`, its failures as the client's answers."""
        try:
            return decrypt(
                sealed,
                self.get_query_argument("msg_signature", ""),
                self.get_query_argument("timestamp", ""),
                self.get_query_argument("nonce", ""),
            )
        except SignatureError:
            raise Rejected(403, "signature", "invalid msg_signature") from None
        except DecryptError:
            raise Rejected(400, "decrypt", f"cannot decrypt {what}") from None

    async def post(self, _name: str | None = None) -> None:
        started = time.monotonic()
        try:
            xml, aes_key = self.read_message()
            if aes_key is None and not await self.first_use_of_signature():
                raise Rejected(403, "replayed", "signature already used with another body")
        except Rejected as rejected:
            self.reject(rejected)
            return
        account = self.route.account.name
        key = ledger.message_key(account, dedupe_key(self.fields))
        try:
            outcome = await self.relay.dispatcher.dispatch(self.route, key, xml, self.hung_up)
        except (OSError, sqlite3.Error) as exc:
            # Neither Redis nor the spool could keep it: WeChat must try again.
            log.error("cannot keep message %s: %s", key, exc)
            MESSAGES.labels(account, "unavailable").inc()
            self.set_status(503)
            self.finish("service unavailable")
            return
        MESSAGES.labels(account, outcome.how).inc()
        if outcome.reply is None:
            return
        REPLY_SECONDS.labels(account).observe(time.monotonic() - started)
        reply = outcome.reply
        if not reply and outcome.how in LATE_OUTCOMES and self.route.account.keeps_for_pickup:
            reply = self.pickup_notice()
        self.answer(reply, aes_key)

    def pickup_notice(self) -> str:
        """The reply will be kept for the user's next message: tell them to send one."""
        user, account_id = str(self.fields.get("FromUserName", "")), str(self.fields.get("ToUserName", ""))
        return Text(self.route.account.pickup_text).render(user, account_id)

    async def first_use_of_signature(self) -> bool:
        """Plaintext's signature does not cover the body: one signature, one body."""
        return await self.route.shard.signatures.admits(
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

    def answer(self, reply: str, key: bytes | None) -> None:
        if not reply:
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("success")
            return
        if key is not None and self.route.crypto is not None:
            reply = self.route.crypto.encrypt_reply(reply, self.get_query_argument("nonce", ""), key=key)
        self.set_header("Content-Type", "application/xml; charset=utf-8")
        self.finish(reply)
