"""A simulated WeChat server: delivers messages to a callback URL as WeChat does.

Each delivery gets `deadline` seconds; a delivery that times out or answers
anything but HTTP 200 is followed by the identical request, up to
`deliveries` in all. A 200 reply is checked the way WeChat reads it: in the
encrypted modes it must be a signed envelope, except `success` or an empty
body, which need no encryption in any mode.

Mode "wecom" plays a WeCom (企业微信) self-built app's callbacks instead:
always encrypted with the CorpID as ReceiveId, signed by msg_signature alone,
the AgentID in the body, and URL verification with an encrypted echostr.
"""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import httpx

from simulator.messages import DEFAULT_ACCOUNT, DEFAULT_USER, Fields, FieldValue, event_message, text_message, to_xml
from wechat.crypto import MessageCrypto, encrypt
from wechat.exceptions import DecryptError, InvalidConfigError, SignatureError, XMLError
from wechat.parser import parse_xml
from wechat.replies import cdata
from wechat.signature import make_signature, validate_token

# An official account's modes (the CLI's); WECOM is the other mode the simulator plays.
MODES = ("plain", "compat", "safe")
WECOM = "wecom"
NO_PASSIVE_REPLY = (b"", b"success")

# An inbound message: ready XML, or fields for `simulator.messages.to_xml`.
Message = Union[str, bytes, Fields]
# An HTTP status, "timeout" (the deadline passed) or "unreachable" (no connection).
Outcome = Union[int, str]
# Shared because building a TLS context takes longer than a local delivery.
_TLS = ssl.create_default_context()


class ReplyVerificationError(Exception):
    """The callback answered 200 with a reply WeChat would not accept."""


@dataclass(frozen=True)
class Attempt:
    """What one delivery got, and how long it took."""

    outcome: Outcome
    seconds: float


@dataclass(frozen=True)
class DeliveryResult:
    """How WeChat fared delivering one message.

    `elapsed` runs from the first send to the answer, or to the last failure
    when no delivery answered. `reply` is None for `success` or an empty body.
    """

    answered: bool
    delivery: int | None
    elapsed: float
    attempts: list[Attempt]
    body: bytes
    reply: dict[str, Any] | None
    decrypted: bool

    @property
    def reply_message_type(self) -> str | None:
        return None if self.reply is None else self.reply.get("MsgType")

    @property
    def text(self) -> str | None:
        """The Content of a text reply."""
        if self.reply is None or self.reply.get("MsgType") != "text":
            return None
        return self.reply.get("Content")


@dataclass(frozen=True)
class Verification:
    """How the callback answered a URL verification: `expected` is the one body that passes."""

    outcome: Outcome
    body: bytes
    expected: str

    @property
    def ok(self) -> bool:
        # Byte for byte: WeChat accepts no quotes, BOM or newline around it.
        return self.outcome == 200 and self.body == self.expected.encode("utf-8")


class WeChatSimulator:
    """Plays WeChat's server against one callback URL.

    In WeCom mode, `corpid` and `agentid` name the app (messages go to the
    CorpID, whatever `account` says) and `appid` is unused.
    Holds no per-request state, so one instance can be used from many threads.
    """

    def __init__(
        self,
        url: str,
        token: str,
        appid: str = "",
        aes_key: str | None = None,
        mode: str = "plain",
        deadline: float = 5.0,
        deliveries: int = 3,
        account: str = DEFAULT_ACCOUNT,
        corpid: str = "",
        agentid: int | None = None,
    ) -> None:
        if mode not in (*MODES, WECOM):
            raise InvalidConfigError(f"mode must be one of {', '.join((*MODES, WECOM))}, not {mode!r}")
        if deadline <= 0 or deliveries < 1:
            raise InvalidConfigError("deadline must be positive and deliveries at least 1")
        self.token = validate_token(token)
        self.crypto: MessageCrypto | None = None
        if mode == WECOM:
            if not aes_key or not corpid or agentid is None:
                raise InvalidConfigError("wecom mode needs a CorpID, an AgentID and an EncodingAESKey")
            self.crypto = MessageCrypto(token, aes_key, corpid)
            account = corpid
        elif mode != "plain":
            if not aes_key or not appid:
                raise InvalidConfigError(f"{mode} mode needs an appid and an EncodingAESKey")
            self.crypto = MessageCrypto(token, aes_key, appid)
        self.url = url
        self.appid = appid
        self.corpid = corpid
        self.agentid = agentid
        self.mode = mode
        self.deadline = deadline
        self.deliveries = deliveries
        self.account = account

    def say(self, text: str, user: str = DEFAULT_USER, **fields: FieldValue) -> DeliveryResult:
        """Deliver a text message from `user` (in WeCom mode, a member's UserID)."""
        return self.send(text_message(text, user=user, account=self.account, **self._agent(fields)))

    def event(
        self, name: str, key: str | None = None, user: str = DEFAULT_USER, **fields: FieldValue
    ) -> DeliveryResult:
        """Deliver an event from `user` (see `simulator.messages.event_message`)."""
        return self.send(event_message(name, key, user=user, account=self.account, **self._agent(fields)))

    def _agent(self, fields: dict[str, FieldValue]) -> dict[str, FieldValue]:
        """WeCom's messages end with the app's AgentID."""
        if self.agentid is None or self.mode != WECOM:
            return fields
        return {"AgentID": self.agentid, **fields}

    def send(self, message: Message) -> DeliveryResult:
        """Deliver a message with WeChat's deadline and retries."""
        return self.deliver(*self.build_request(message))

    def build_request(
        self, message: Message, *, timestamp: str | None = None, nonce: str | None = None
    ) -> tuple[dict[str, str], bytes]:
        """The query parameters and body WeChat would POST for `message`."""
        xml = _as_xml(message)
        fields = parse_xml(xml)
        timestamp = timestamp or _timestamp()
        nonce = nonce or _nonce()
        if self.crypto is not None and self.mode == WECOM:
            encrypted = encrypt(self.crypto.key, xml, self.crypto.appid)
            envelope = {
                "ToUserName": fields.get("ToUserName", self.corpid),
                "AgentID": fields.get("AgentID", str(self.agentid)),
                "Encrypt": encrypted,
            }
            signature = make_signature(self.token, timestamp, nonce, encrypted)
            return {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce}, to_xml(envelope).encode()
        params = {"signature": make_signature(self.token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce}
        if "FromUserName" in fields:
            params["openid"] = fields["FromUserName"]
        if self.crypto is None:
            return params, xml.encode("utf-8")
        encrypted = encrypt(self.crypto.key, xml, self.crypto.appid)
        params["encrypt_type"] = "aes"
        params["msg_signature"] = make_signature(self.token, timestamp, nonce, encrypted)
        if self.mode == "safe":
            body = to_xml({"ToUserName": fields.get("ToUserName", self.account), "Encrypt": encrypted})
        else:
            body = _with_encrypt(xml, encrypted)
        return params, body.encode("utf-8")

    def build_verification(
        self, echo: str | None = None, *, timestamp: str | None = None, nonce: str | None = None
    ) -> tuple[dict[str, str], str]:
        """The query of the GET that verifies the callback URL, and the body that passes it.

        WeCom encrypts the echostr and signs it as msg_signature; an official
        account sends it in the clear beside a plain signature, in every mode.
        """
        echo = echo or str(secrets.randbelow(9 * 10**18) + 10**18)
        timestamp = timestamp or _timestamp()
        nonce = nonce or _nonce()
        if self.crypto is not None and self.mode == WECOM:
            echostr = encrypt(self.crypto.key, echo, self.crypto.appid)
            signature = make_signature(self.token, timestamp, nonce, echostr)
            return {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce, "echostr": echostr}, echo
        signature = make_signature(self.token, timestamp, nonce)
        return {"signature": signature, "timestamp": timestamp, "nonce": nonce, "echostr": echo}, echo

    def verify_url(self, params: Mapping[str, str] | None = None, expected: str | None = None) -> Verification:
        """GET the callback URL once, as the console's "save" does; a fresh `build_verification()` by default."""
        if params is None:
            params, expected = self.build_verification()
        elif expected is None:
            raise ValueError("given params need the expected answer")
        outcome, body = self._request("GET", params, b"")
        return Verification(outcome, body, expected)

    def deliver(self, params: Mapping[str, str], body: bytes) -> DeliveryResult:
        """POST an exact request (perhaps tampered with) with WeChat's deadline and retries."""
        attempts: list[Attempt] = []
        started = time.monotonic()
        for delivery in range(1, self.deliveries + 1):
            sent = time.monotonic()
            outcome, answer = self._request("POST", params, body)
            seconds = time.monotonic() - sent
            # httpx times each phase; WeChat's deadline is for the whole exchange.
            if seconds > self.deadline:
                outcome = "timeout"
            attempts.append(Attempt(outcome, seconds))
            if outcome == 200:
                reply, decrypted = self._read_reply(answer)
                return DeliveryResult(True, delivery, time.monotonic() - started, attempts, answer, reply, decrypted)
        return DeliveryResult(False, None, time.monotonic() - started, attempts, b"", None, False)

    def _request(self, method: str, params: Mapping[str, str], body: bytes) -> tuple[Outcome, bytes]:
        try:
            # A client per request keeps the simulator thread-safe; trust_env=False
            # because WeChat does not go through this machine's proxies.
            response = httpx.request(
                method,
                self.url,
                params=params,
                content=body,
                headers={"Content-Type": "text/xml"} if method == "POST" else {},
                timeout=self.deadline,
                trust_env=False,
                verify=_TLS,
            )
        except httpx.TimeoutException:
            return "timeout", b""
        except httpx.TransportError:
            return "unreachable", b""
        return response.status_code, response.content

    def _read_reply(self, body: bytes) -> tuple[dict[str, Any] | None, bool]:
        """Parse a 200 answer; return the reply and whether it was decrypted."""
        if body in NO_PASSIVE_REPLY:
            return None, False
        document = _parse_reply(body)
        if self.crypto is None:
            if "Encrypt" in document:
                raise ReplyVerificationError("encrypted reply to a plaintext request")
            return document, False
        if "Encrypt" not in document:
            raise ReplyVerificationError("plaintext reply to an encrypted request")
        try:
            plaintext, _ = self.crypto.decrypt_message(
                document["Encrypt"], document.get("MsgSignature"), document.get("TimeStamp"), document.get("Nonce")
            )
        except SignatureError as exc:
            raise ReplyVerificationError(f"reply MsgSignature does not verify: {exc}") from None
        except DecryptError as exc:
            raise ReplyVerificationError(f"reply Encrypt does not decrypt: {exc}") from None
        return _parse_reply(plaintext), True


def _timestamp() -> str:
    return str(int(time.time()))


def _nonce() -> str:
    return str(secrets.randbelow(9 * 10**9) + 10**9)


def _as_xml(message: Message) -> str:
    if isinstance(message, bytes):
        return message.decode("utf-8")
    if isinstance(message, str):
        return message
    return to_xml(message)


def _with_encrypt(xml: str, encrypted: str) -> str:
    """`xml` with Encrypt added last in its root, as compatible mode sends it."""
    head, closing, tail = xml.rpartition("</xml>")
    return f"{head}<Encrypt>{cdata(encrypted)}</Encrypt>\n{closing}{tail}"


def _parse_reply(reply: str | bytes) -> dict[str, Any]:
    try:
        return parse_xml(reply)
    except XMLError as exc:
        raise ReplyVerificationError(f"reply is not valid XML: {exc}") from None
