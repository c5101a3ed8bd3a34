import base64
import re
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from wechat import (
    AppIdMismatchError,
    DecryptError,
    InvalidBase64Error,
    InvalidConfigError,
    InvalidLengthError,
    InvalidPaddingError,
    MessageCrypto,
    SignatureError,
    parse_xml,
)
from wechat.crypto import build_envelope, decode_aes_key, decrypt, encrypt
from wechat.signature import make_signature

V3_TOKEN = "spamtest"
V3_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
V3_APPID = "wx2c2769f8efd9abc2"
V3_TIMESTAMP = "1409735669"
V3_NONCE = "1320562132"
V3_MSG_SIGNATURE = "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
V3_PLAIN_SIGNATURE = "16120ec1b8dbb870f510d87ce6bc2463eae6ca1a"
V3_ENCRYPT = (
    "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQ"
    "HFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tED"
    "YsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbG"
    "py0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv"
    "1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE="
)
V3_MESSAGE = (
    "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n"
    "<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n"
    "<CreateTime>1409735668</CreateTime>\n"
    "<MsgType><![CDATA[text]]></MsgType>\n"
    "<Content><![CDATA[abcdteT]]></Content>\n"
    "<MsgId>6054768590064713728</MsgId>\n"
    "</xml>"
)

V4_TOKEN = "AAAAA"
V4_AES_KEY = "A" * 43
V4_APPID = "wxba5fad812f8e6fb9"
V4_REPLY_ENCRYPT = "ELGduP2YcVatjqIS+eZbp80MNLoAUWvzzyJxgGzxZO/5sAvd070Bs6qrLARC9nVHm48Y4hyRbtzve1L32tmxSQ=="
V4_REPLY_SIGNATURE = "1b9339964ed2e271e7c7b6ff2b0ef902fc94dea1"
V4_INBOUND_ENCRYPT = (
    "+qdx1OKCy+5JPCBFWw70tm0fJGb2Jmeia4FCB7kao+/Q5c/ohsOzQHi8khUOb05JCpj0JB4RvQMkUyus8TPxLKJGQqcvZqz"
    "DpVzazhZv6JsXUnnR8XGT740XgXZUXQ7vJVnAG+tE8NUd4yFyjPy7GgiaviNrlCTj+l5kdfMuFUPpRSrfMZuMcp3Fn2Pede"
    "2IuQrKEYwKSqFIZoNqJ4M8EajAsjLY2km32IIjdf8YL/P50F7mStwntrA2cPDrM1kb6mOcfBgRtWygb3VIYnSeOBrebufAl"
    "r7F9mFUPAJGj04="
)
V4_INBOUND_MESSAGE = (
    '{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY",'
    '"CreateTime":1714112445,"MsgType":"event","Event":"debug_demo","debug_str":"hello world"}'
)

KEY = decode_aes_key(V4_AES_KEY)
APPID = "wxappid"


def raw_decrypt(key: bytes, encrypted: str) -> bytes:
    """AES-CBC without any checks, to look inside and to build bad ciphertexts."""
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    return decryptor.update(base64.b64decode(encrypted)) + decryptor.finalize()


def raw_encrypt(key: bytes, plain: bytes) -> str:
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def frame(message: bytes, appid: bytes = APPID.encode(), length: int | None = None) -> bytes:
    length = len(message) if length is None else length
    return b"R" * 16 + struct.pack(">I", length) + message + appid


# --- official vectors -------------------------------------------------------


def test_v3_decrypts_to_the_official_message():
    crypto = MessageCrypto(V3_TOKEN, V3_AES_KEY, V3_APPID)
    message, key = crypto.decrypt_message(V3_ENCRYPT, V3_MSG_SIGNATURE, V3_TIMESTAMP, V3_NONCE)
    assert message == V3_MESSAGE
    assert key == decode_aes_key(V3_AES_KEY)


def test_v3_plaintext_layout():
    plain = raw_decrypt(decode_aes_key(V3_AES_KEY), V3_ENCRYPT)
    assert plain[:16] == b"89465c840c5f116f"
    assert struct.unpack(">I", plain[16:20]) == (280,)
    assert plain[20:300].decode() == V3_MESSAGE
    assert plain[300 : 300 + len(V3_APPID)] == V3_APPID.encode()
    assert decrypt(decode_aes_key(V3_AES_KEY), V3_ENCRYPT, V3_APPID) == V3_MESSAGE.encode()


def test_v3_msg_signature_and_plain_signature():
    assert make_signature(V3_TOKEN, V3_TIMESTAMP, V3_NONCE, V3_ENCRYPT) == V3_MSG_SIGNATURE
    assert make_signature(V3_TOKEN, V3_TIMESTAMP, V3_NONCE) == V3_PLAIN_SIGNATURE


def test_v3_wrong_appid_is_rejected():
    crypto = MessageCrypto(V3_TOKEN, V3_AES_KEY, "wxWRONG")
    with pytest.raises(AppIdMismatchError):
        crypto.decrypt_message(V3_ENCRYPT, V3_MSG_SIGNATURE, V3_TIMESTAMP, V3_NONCE)


def test_v3_plain_signature_as_msg_signature_is_rejected():
    crypto = MessageCrypto(V3_TOKEN, V3_AES_KEY, V3_APPID)
    with pytest.raises(SignatureError):
        crypto.decrypt_message(V3_ENCRYPT, V3_PLAIN_SIGNATURE, V3_TIMESTAMP, V3_NONCE)


def test_signature_is_checked_before_decrypting():
    crypto = MessageCrypto(V3_TOKEN, V3_AES_KEY, V3_APPID)
    with pytest.raises(SignatureError):
        crypto.decrypt_message("not base64!", None, V3_TIMESTAMP, V3_NONCE)


def test_v4_encrypt_then_sign_byte_for_byte():
    assert encrypt(KEY, '{"demo_resp":"good luck"}', V4_APPID, b"707722b803182950") == V4_REPLY_ENCRYPT
    crypto = MessageCrypto(V4_TOKEN, V4_AES_KEY, V4_APPID)
    envelope = crypto.encrypt_reply(
        '{"demo_resp":"good luck"}', "415670741", 1713424427, random_prefix=b"707722b803182950"
    )
    assert parse_xml(envelope) == {
        "Encrypt": V4_REPLY_ENCRYPT,
        "MsgSignature": V4_REPLY_SIGNATURE,
        "TimeStamp": "1713424427",
        "Nonce": "415670741",
    }


def test_v4_inbound_decrypt():
    crypto = MessageCrypto(V4_TOKEN, V4_AES_KEY, V4_APPID)
    message, _ = crypto.decrypt_message(
        V4_INBOUND_ENCRYPT, "046e02f8204d34f8ba5fa3b1db94908f3df2e9b3", "1714112445", "415670741"
    )
    assert message == V4_INBOUND_MESSAGE
    plain = raw_decrypt(KEY, V4_INBOUND_ENCRYPT)
    assert plain[:16] == b"a8eedb185eb2fecf"
    assert struct.unpack(">I", plain[16:20]) == (167,)


# --- envelope ---------------------------------------------------------------


def test_envelope_element_order():
    envelope = build_envelope("ENC", "SIG", 123, "456")
    assert envelope == (
        "<xml>\n"
        "<Encrypt><![CDATA[ENC]]></Encrypt>\n"
        "<MsgSignature><![CDATA[SIG]]></MsgSignature>\n"
        "<TimeStamp>123</TimeStamp>\n"
        "<Nonce><![CDATA[456]]></Nonce>\n"
        "</xml>"
    )
    tags = re.findall(r"<(\w+)>", envelope)
    assert tags == ["xml", "Encrypt", "MsgSignature", "TimeStamp", "Nonce"]


def test_envelope_stays_well_formed_with_a_hostile_nonce():
    assert parse_xml(build_envelope("ENC", "SIG", "1", "a]]>b\x00"))["Nonce"] == "a]]>b"


def test_envelope_rejects_a_non_numeric_timestamp():
    with pytest.raises(ValueError):
        build_envelope("ENC", "SIG", "1<2", "456")


def test_encrypt_reply_defaults_to_now_and_round_trips(monkeypatch):
    monkeypatch.setattr("time.time", lambda: 1700000000.5)
    crypto = MessageCrypto(V4_TOKEN, V4_AES_KEY, V4_APPID)
    fields = parse_xml(crypto.encrypt_reply("<xml>你好</xml>", "99"))
    assert fields["TimeStamp"] == "1700000000"
    message, _ = crypto.decrypt_message(fields["Encrypt"], fields["MsgSignature"], fields["TimeStamp"], fields["Nonce"])
    assert message == "<xml>你好</xml>"


# --- key rotation -------------------------------------------------------------


def test_key_rotation_falls_back_to_the_previous_key():
    old_key = "B" * 43
    crypto = MessageCrypto(V4_TOKEN, "C" * 43, V4_APPID, previous_aes_key=old_key)
    encrypted = encrypt(decode_aes_key(old_key), "hello", V4_APPID)
    signature = make_signature(V4_TOKEN, "1", "2", encrypted)

    message, key = crypto.decrypt_message(encrypted, signature, "1", "2")
    assert message == "hello"
    assert key == decode_aes_key(old_key)

    reply = parse_xml(crypto.encrypt_reply("world", "2", 1, key=key))
    assert decrypt(key, reply["Encrypt"], V4_APPID) == b"world"
    with pytest.raises(DecryptError):
        decrypt(crypto.key, reply["Encrypt"], V4_APPID)
    # The old-key-only configuration accepts the reply too.
    old_only = MessageCrypto(V4_TOKEN, old_key, V4_APPID)
    assert old_only.decrypt_message(reply["Encrypt"], reply["MsgSignature"], reply["TimeStamp"], reply["Nonce"]) == (
        "world",
        key,
    )


def test_current_key_is_preferred():
    crypto = MessageCrypto(V4_TOKEN, "C" * 43, V4_APPID, previous_aes_key="B" * 43)
    encrypted = encrypt(crypto.key, "hello", V4_APPID)
    signature = make_signature(V4_TOKEN, "1", "2", encrypted)
    assert crypto.decrypt_message(encrypted, signature, "1", "2") == ("hello", crypto.key)


def test_unknown_key_fails_even_with_rotation():
    crypto = MessageCrypto(V4_TOKEN, "C" * 43, V4_APPID, previous_aes_key="B" * 43)
    encrypted = encrypt(decode_aes_key("D" * 43), "hello", V4_APPID)
    signature = make_signature(V4_TOKEN, "1", "2", encrypted)
    with pytest.raises(DecryptError):
        crypto.decrypt_message(encrypted, signature, "1", "2")


def test_empty_previous_key_means_no_rotation():
    assert MessageCrypto(V4_TOKEN, V4_AES_KEY, V4_APPID, previous_aes_key="").previous_key is None


# --- strict decryption --------------------------------------------------------


@pytest.mark.parametrize("encrypted", ["not base64!", "QUJDRA", "QUJD RA==", "QUJD\nRA==", "éé=="])
def test_bad_base64(encrypted):
    with pytest.raises(InvalidBase64Error):
        decrypt(KEY, encrypted, APPID)


@pytest.mark.parametrize("size", [0, 15, 17, 33])
def test_length_not_a_multiple_of_16(size):
    with pytest.raises(InvalidLengthError):
        decrypt(KEY, base64.b64encode(b"x" * size).decode(), APPID)


def test_pad_zero():
    plain = frame(b"hello")
    plain += b"\x05" * (31 - len(plain) % 32) + b"\x00"
    with pytest.raises(InvalidPaddingError):
        decrypt(KEY, raw_encrypt(KEY, plain), APPID)


def test_pad_33():
    plain = frame(b"hello")
    plain += b"\x21" * (64 - len(plain))
    with pytest.raises(InvalidPaddingError):
        decrypt(KEY, raw_encrypt(KEY, plain), APPID)


def test_inconsistent_pad_bytes():
    plain = frame(b"hello")
    pad = 32 - len(plain) % 32
    plain += b"\x01" + bytes([pad]) * (pad - 1)
    with pytest.raises(InvalidPaddingError):
        decrypt(KEY, raw_encrypt(KEY, plain), APPID)


def test_full_block_of_padding_is_valid():
    message = b"m" * (64 - 20 - len(APPID))
    plain = frame(message) + bytes([32]) * 32
    assert decrypt(KEY, raw_encrypt(KEY, plain), APPID) == message


def test_length_field_too_large():
    plain = frame(b"hello", length=1000)
    pad = 32 - len(plain) % 32
    with pytest.raises(InvalidLengthError):
        decrypt(KEY, raw_encrypt(KEY, plain + bytes([pad]) * pad), APPID)


def test_plaintext_shorter_than_the_header():
    plain = b"R" * 16 + bytes([16]) * 16
    with pytest.raises(InvalidLengthError):
        decrypt(KEY, raw_encrypt(KEY, plain), APPID)


def test_appid_mismatch():
    with pytest.raises(AppIdMismatchError):
        decrypt(KEY, encrypt(KEY, "hello", "wxother"), APPID)


def test_appid_prefix_is_not_enough():
    with pytest.raises(AppIdMismatchError):
        decrypt(KEY, encrypt(KEY, "hello", APPID + "x"), APPID)


def test_wrong_key_fails():
    with pytest.raises(DecryptError):
        decrypt(decode_aes_key("Z" * 43), encrypt(KEY, "hello", APPID), APPID)


def test_invalid_utf8_plaintext_is_a_decrypt_error():
    crypto = MessageCrypto(V4_TOKEN, V4_AES_KEY, APPID)
    encrypted = encrypt(KEY, b"\xff\xfe", APPID)
    signature = make_signature(V4_TOKEN, "1", "2", encrypted)
    with pytest.raises(DecryptError):
        crypto.decrypt_message(encrypted, signature, "1", "2")


def test_specific_errors_are_decrypt_errors():
    for error in (InvalidBase64Error, InvalidPaddingError, InvalidLengthError, AppIdMismatchError):
        assert issubclass(error, DecryptError)


def test_random_prefix_must_be_16_bytes():
    with pytest.raises(ValueError):
        encrypt(KEY, "hello", APPID, b"short")


def test_default_random_prefix_differs_between_calls():
    assert encrypt(KEY, "hello", APPID) != encrypt(KEY, "hello", APPID)


# --- configuration ------------------------------------------------------------


def test_decode_aes_key():
    assert decode_aes_key(V4_AES_KEY) == b"\x00" * 32
    assert len(decode_aes_key(V3_AES_KEY)) == 32


@pytest.mark.parametrize("aes_key", ["", "A" * 42, "A" * 44, "A" * 42 + "=", "A" * 42 + "+", "A" * 42 + "\n", "é" * 43])
def test_invalid_aes_keys(aes_key):
    with pytest.raises(InvalidConfigError):
        decode_aes_key(aes_key)


@pytest.mark.parametrize(
    "token, aes_key, appid, previous",
    [
        ("ab", V4_AES_KEY, V4_APPID, None),
        (V4_TOKEN, "A" * 42, V4_APPID, None),
        (V4_TOKEN, V4_AES_KEY, "", None),
        (V4_TOKEN, V4_AES_KEY, "wx app", None),
        (V4_TOKEN, V4_AES_KEY, V4_APPID, "short"),
    ],
)
def test_message_crypto_validates_its_config(token, aes_key, appid, previous):
    with pytest.raises(InvalidConfigError):
        MessageCrypto(token, aes_key, appid, previous_aes_key=previous)


def test_key_must_be_32_bytes():
    with pytest.raises(InvalidConfigError):
        encrypt(b"k" * 16, "hello", APPID)


# --- round trips --------------------------------------------------------------

aes_keys = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    min_size=43,
    max_size=43,
)
appids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


@given(aes_key=aes_keys, appid=appids, message=st.text())
def test_encrypt_decrypt_round_trip(aes_key, appid, message):
    key = decode_aes_key(aes_key)
    encrypted = encrypt(key, message, appid)
    assert len(base64.b64decode(encrypted)) % 32 == 0
    assert decrypt(key, encrypted, appid) == message.encode()


@given(
    aes_key=aes_keys,
    appid=appids,
    message=st.text(),
    nonce=st.from_regex(r"[0-9]{1,10}", fullmatch=True),
)
def test_message_crypto_round_trip(aes_key, appid, message, nonce):
    crypto = MessageCrypto("token", aes_key, appid)
    fields = parse_xml(crypto.encrypt_reply(message, nonce, 1714112445))
    assert crypto.decrypt_message(fields["Encrypt"], fields["MsgSignature"], fields["TimeStamp"], fields["Nonce"]) == (
        message,
        crypto.key,
    )
