"""BASELINE — the WeChat side of both baseline servers: check the signature,
decrypt a safe-mode body, encrypt the reply. The same library calls as the
appliance, so the baselines pay the same per-request protocol cost."""

from __future__ import annotations

from tornado.web import HTTPError, RequestHandler

from common.settings import Settings
from wechat.crypto import MessageCrypto
from wechat.exceptions import WeChatError
from wechat.parser import parse_xml
from wechat.signature import check_signature

SETTINGS = Settings.from_env()
CRYPTO = MessageCrypto(SETTINGS.token, SETTINGS.aes_key, SETTINGS.appid) if SETTINGS.aes_key else None


def read_message(handler: RequestHandler) -> tuple[str, bool]:
    """The message XML, and whether it came encrypted."""
    arg = handler.get_query_argument
    try:
        check_signature(SETTINGS.token, arg("signature", ""), arg("timestamp", ""), arg("nonce", ""))
        if arg("encrypt_type", "raw") != "aes":
            return handler.request.body.decode(), False
        encrypt = parse_xml(handler.request.body)["Encrypt"]
        xml, _ = CRYPTO.decrypt_message(encrypt, arg("msg_signature", ""), arg("timestamp", ""), arg("nonce", ""))
        return xml, True
    except (WeChatError, KeyError, AttributeError):
        raise HTTPError(403) from None


def write_reply(handler: RequestHandler, reply: str, encrypted: bool) -> None:
    if not reply:
        handler.finish("success")
        return
    if encrypted:
        reply = CRYPTO.encrypt_reply(reply, handler.get_query_argument("nonce", ""))
    handler.set_header("Content-Type", "application/xml; charset=utf-8")
    handler.finish(reply)
