"""AES-256-CBC message encryption used by the compatible and safe modes."""

import base64
import binascii
import hmac
import os
import re
import struct
import time

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .exceptions import (
    AppIdMismatchError,
    DecryptError,
    InvalidBase64Error,
    InvalidConfigError,
    InvalidLengthError,
    InvalidPaddingError,
)
from .replies import cdata
from .signature import check_msg_signature, make_signature, validate_token

# WeChat pads PKCS#7 to 32 bytes, not to AES's 16-byte block, so the padding
# is done here rather than by a 16-byte padder.
_PAD_BLOCK = 32
_PREFIX_SIZE = 16
_HEADER_SIZE = _PREFIX_SIZE + 4
_AES_KEY = re.compile(r"[A-Za-z0-9]{43}")
# No documented format (wx + 16 hex in practice); reject only what could not
# be an id at all.
_APPID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TIMESTAMP = re.compile(r"[0-9]+")


def decode_aes_key(encoding_aes_key: str) -> bytes:
    """Turn a 43-character EncodingAESKey into the 32-byte AES key."""
    if not isinstance(encoding_aes_key, str) or not _AES_KEY.fullmatch(encoding_aes_key):
        raise InvalidConfigError("EncodingAESKey must be 43 characters [A-Za-z0-9]")
    return base64.b64decode(encoding_aes_key + "=")


def encrypt(key: bytes, message: str | bytes, appid: str, random_prefix: bytes | None = None) -> str:
    """Encrypt a message for WeChat and return it as base64 text."""
    if isinstance(message, str):
        message = message.encode("utf-8")
    if random_prefix is None:
        random_prefix = os.urandom(_PREFIX_SIZE)
    if len(random_prefix) != _PREFIX_SIZE:
        raise ValueError("random_prefix must be 16 bytes")
    plain = random_prefix + struct.pack(">I", len(message)) + message + appid.encode("utf-8")
    pad = _PAD_BLOCK - len(plain) % _PAD_BLOCK
    plain += bytes([pad]) * pad
    encryptor = _cipher(key).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode("ascii")


def decrypt(key: bytes, encrypted: str, appid: str) -> bytes:
    """Decrypt base64 text from WeChat and return the message bytes.

    Each failure has its own exception; callers verify `msg_signature` first,
    so the distinct errors are not a padding oracle.
    """
    try:
        data = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidBase64Error("Encrypt is not valid base64") from exc
    if not data or len(data) % 16:
        raise InvalidLengthError("ciphertext is not a whole number of AES blocks")
    decryptor = _cipher(key).decryptor()
    plain = decryptor.update(data) + decryptor.finalize()

    pad = plain[-1]
    if not 1 <= pad <= _PAD_BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise InvalidPaddingError("invalid PKCS#7 padding")
    plain = plain[:-pad]
    if len(plain) < _HEADER_SIZE:
        raise InvalidLengthError("plaintext too short")
    (length,) = struct.unpack(">I", plain[_PREFIX_SIZE:_HEADER_SIZE])
    if length > len(plain) - _HEADER_SIZE:
        raise InvalidLengthError("message length exceeds the plaintext")
    message = plain[_HEADER_SIZE : _HEADER_SIZE + length]
    if not hmac.compare_digest(plain[_HEADER_SIZE + length :], appid.encode("utf-8")):
        raise AppIdMismatchError("message is for another appid")
    return message


def build_envelope(encrypt: str, msg_signature: str, timestamp: str | int, nonce: str) -> str:
    """Render the encrypted reply envelope in the element order WeChat uses."""
    if not _TIMESTAMP.fullmatch(str(timestamp)):
        raise ValueError("timestamp must be decimal digits")
    return (
        "<xml>\n"
        f"<Encrypt>{cdata(encrypt)}</Encrypt>\n"
        f"<MsgSignature>{cdata(msg_signature)}</MsgSignature>\n"
        f"<TimeStamp>{timestamp}</TimeStamp>\n"
        f"<Nonce>{cdata(nonce)}</Nonce>\n"
        "</xml>"
    )


def _cipher(key: bytes) -> Cipher[modes.CBC]:
    if len(key) != 32:
        raise InvalidConfigError("AES key must be 32 bytes")
    # WeChat uses the key's first 16 bytes as the IV.
    return Cipher(algorithms.AES(key), modes.CBC(key[:16]))


class MessageCrypto:
    """The account's token, AES key(s) and appid, validated once."""

    def __init__(
        self,
        token: str,
        encoding_aes_key: str,
        appid: str,
        previous_aes_key: str | None = None,
    ) -> None:
        if not isinstance(appid, str) or not _APPID.fullmatch(appid):
            raise InvalidConfigError("appid must be 1-64 characters [A-Za-z0-9_-]")
        self.token = validate_token(token)
        self.appid = appid
        self.key = decode_aes_key(encoding_aes_key)
        # An empty previous key (unset setting) means no rotation in progress.
        self.previous_key = decode_aes_key(previous_aes_key) if previous_aes_key else None

    def decrypt_message(
        self,
        encrypt: str,
        msg_signature: str | None,
        timestamp: str | None,
        nonce: str | None,
    ) -> tuple[str, bytes]:
        """Verify and decrypt `Encrypt`; return the message and the key that worked."""
        check_msg_signature(self.token, msg_signature, timestamp, nonce, encrypt)
        return self._decrypt(encrypt)

    def decrypt_echostr(self, echostr: str, msg_signature: str | None, timestamp: str | None, nonce: str | None) -> str:
        """WeCom's URL verification: `echostr` is encrypted and signed like a message; its plaintext is the answer."""
        check_msg_signature(self.token, msg_signature, timestamp, nonce, echostr)
        return self._decrypt(echostr)[0]

    def _decrypt(self, encrypt: str) -> tuple[str, bytes]:
        keys = [self.key] if self.previous_key is None else [self.key, self.previous_key]
        errors: list[DecryptError] = []
        for key in keys:
            try:
                message = decrypt(key, encrypt, self.appid)
            except DecryptError as exc:
                errors.append(exc)
            else:
                try:
                    return message.decode("utf-8"), key
                except UnicodeDecodeError as exc:
                    raise DecryptError("decrypted message is not valid UTF-8") from exc
        # The current key's error is the one worth reporting.
        raise errors[0]

    def encrypt_reply(
        self,
        reply: str,
        nonce: str,
        timestamp: str | int | None = None,
        key: bytes | None = None,
        random_prefix: bytes | None = None,
    ) -> str:
        """Encrypt and sign a reply; return the envelope XML."""
        if timestamp is None:
            timestamp = int(time.time())
        encrypted = encrypt(self.key if key is None else key, reply, self.appid, random_prefix)
        signature = make_signature(self.token, str(timestamp), nonce, encrypted)
        return build_envelope(encrypted, signature, timestamp, nonce)
