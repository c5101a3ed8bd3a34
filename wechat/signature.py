"""SHA-1 signatures over sorted strings, as WeChat computes them."""

import hashlib
import hmac
import re

from .exceptions import InvalidConfigError, SignatureError

_TOKEN = re.compile(r"[A-Za-z0-9]{3,32}")


def make_signature(*parts: str) -> str:
    """Return sha1 of the sorted, concatenated parts as lowercase hex."""
    # surrogatepass: hostile query strings must hash (and mismatch), not crash.
    joined = "".join(sorted(parts)).encode("utf-8", "surrogatepass")
    return hashlib.sha1(joined).hexdigest()


def validate_token(token: str) -> str:
    """Return the token if it is 3-32 characters [A-Za-z0-9]."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise InvalidConfigError("token must be 3-32 characters [A-Za-z0-9]")
    return token


def check_signature(token: str, signature: str | None, timestamp: str | None, nonce: str | None) -> None:
    """Verify the plain `signature` query parameter."""
    _verify(token, signature, timestamp, nonce)


def check_msg_signature(
    token: str,
    msg_signature: str | None,
    timestamp: str | None,
    nonce: str | None,
    encrypt: str,
) -> None:
    """Verify `msg_signature`, which also covers the body's `Encrypt`."""
    _verify(token, msg_signature, timestamp, nonce, encrypt)


def _verify(token: str, signature: str | None, *parts: str | None) -> None:
    # An empty token would make every signature forgeable.
    validate_token(token)
    present = [part for part in parts if part]
    if not signature or len(present) != len(parts):
        raise SignatureError("missing signature parameter")
    expected = make_signature(token, *present)
    given = signature.encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(expected.encode("ascii"), given):
        raise SignatureError("signature mismatch")
