"""WeCom's crypto: ours against WeCom's documented sample, and against
wechatpy's implementation in both directions — not only against itself."""

from __future__ import annotations

import pytest
from wechatpy.enterprise.crypto import WeChatCrypto
from wechatpy.enterprise.exceptions import InvalidCorpIdException
from wechatpy.exceptions import InvalidSignatureException

from wechat.crypto import MessageCrypto, decode_aes_key, encrypt
from wechat.exceptions import AppIdMismatchError, SignatureError
from wechat.parser import parse_xml
from wechat.signature import make_signature

# WeCom's documentation (加解密方案说明, the verify-URL sample).
SAMPLE = {
    "token": "QDG6eK",
    "aes_key": "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
    "corpid": "wx5823bf96d3bd56c7",
    "msg_signature": "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
    "timestamp": "1409659589",
    "nonce": "263014780",
    "echostr": "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==",
}
TOKEN, AES_KEY, CORPID = "stafftoken1", "W" * 43, "ww0000000000000001"
MESSAGE = (
    f"<xml><ToUserName><![CDATA[{CORPID}]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName>"
    "<CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好]]></Content>"
    "<MsgId>1234567890123456</MsgId><AgentID>1000002</AgentID></xml>"
)


def test_wecoms_documented_echostr_decrypts():
    ours = MessageCrypto(SAMPLE["token"], SAMPLE["aes_key"], SAMPLE["corpid"])
    args = SAMPLE["echostr"], SAMPLE["msg_signature"], SAMPLE["timestamp"], SAMPLE["nonce"]
    assert ours.decrypt_echostr(*args) == "1616140317555161061"
    with pytest.raises(AppIdMismatchError):
        MessageCrypto(SAMPLE["token"], SAMPLE["aes_key"], "wxWRONG").decrypt_echostr(*args)
    with pytest.raises(SignatureError):
        ours.decrypt_echostr(SAMPLE["echostr"], "0" * 40, SAMPLE["timestamp"], SAMPLE["nonce"])


def test_an_echostr_we_seal_is_what_wechatpy_opens_and_the_other_way_round():
    sealed = encrypt(decode_aes_key(AES_KEY), "5927782489442352469", CORPID)
    signature = make_signature(TOKEN, "1700000000", "42", sealed)
    theirs = WeChatCrypto(TOKEN, AES_KEY, CORPID)
    assert theirs.check_signature(signature, "1700000000", "42", sealed) == "5927782489442352469"

    envelope = parse_xml(theirs.encrypt_message("5927782489442352469", "42", "1700000000"))
    opened = MessageCrypto(TOKEN, AES_KEY, CORPID).decrypt_echostr(
        envelope["Encrypt"], envelope["MsgSignature"], "1700000000", "42"
    )
    assert opened == "5927782489442352469"


def test_a_message_wechatpy_seals_for_the_corp_decrypts_with_ours():
    envelope = parse_xml(WeChatCrypto(TOKEN, AES_KEY, CORPID).encrypt_message(MESSAGE, "777", "1700000001"))
    xml, _ = MessageCrypto(TOKEN, AES_KEY, CORPID).decrypt_message(
        envelope["Encrypt"], envelope["MsgSignature"], "1700000001", "777"
    )
    assert xml == MESSAGE
    # Sealed for another corp: refused, however well signed.
    with pytest.raises(AppIdMismatchError):
        MessageCrypto(TOKEN, AES_KEY, "ww_another_corp").decrypt_message(
            envelope["Encrypt"], envelope["MsgSignature"], "1700000001", "777"
        )


def test_a_reply_we_seal_decrypts_with_wechatpy_and_a_plain_signature_does_not_pass_for_msg_signature():
    ours = MessageCrypto(TOKEN, AES_KEY, CORPID)
    reply = ours.encrypt_reply(MESSAGE, "888", timestamp="1700000002")
    envelope = parse_xml(reply)
    theirs = WeChatCrypto(TOKEN, AES_KEY, CORPID)
    assert theirs.decrypt_message(reply, envelope["MsgSignature"], "1700000002", "888") == MESSAGE
    with pytest.raises(InvalidCorpIdException):
        WeChatCrypto(TOKEN, AES_KEY, "ww_another_corp").decrypt_message(
            reply, envelope["MsgSignature"], "1700000002", "888"
        )
    plain = make_signature(TOKEN, "1700000002", "888")
    with pytest.raises(SignatureError):
        ours.decrypt_message(envelope["Encrypt"], plain, "1700000002", "888")
    with pytest.raises(InvalidSignatureException):
        theirs.decrypt_message(reply, plain, "1700000002", "888")
