"""Plaintext mode's guard against a replayed signature.

In plaintext mode WeChat signs only its Token, the timestamp and the nonce,
not the body: whoever sees one callback URL (a proxy's log, a shared screen)
could post any body under it until its timestamp goes stale. So each
signature is remembered, with the hash of its body, for as long as its
timestamp is accepted: WeChat's own retries repeat both and pass; another
body under a signature already seen is refused. Safe mode needs none of this:
its msg_signature covers the encrypted body.

Redis remembers them in the delivery's claim (common/ledger.py's CLAIM);
while Redis cannot answer, each relay remembers what it saw itself.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

from common.ledger import PREFIX

KEY_PREFIX = PREFIX + "sig:"
# What a relay remembers by itself, at most.
LOCAL_LIMIT = 100_000


def _digest(*parts: str | bytes) -> str:
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update(part.encode() if isinstance(part, str) else part)
        hashed.update(b"\n")
    # 128 bits: a collision is as unlikely as a forged signature, at half the memory.
    return hashed.hexdigest()[:32]


@dataclass(frozen=True)
class SignatureUse:
    """A signature and the body it came with, to remember for `ttl` seconds."""

    key: str
    body_hash: str
    ttl: int


def use_of(timestamp: str, nonce: str, signature: str, body: bytes, window: int) -> SignatureUse:
    """A checked, fresh timestamp is assumed: it is accepted until it is `window` old, and remembered so long."""
    ttl = max(1, int(timestamp) + window - int(time.time()) + 1)
    return SignatureUse(KEY_PREFIX + _digest(timestamp, nonce, signature), _digest(body), ttl)


class LocalSignatures:
    """The signatures one relay saw while Redis could not answer."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def admits(self, use: SignatureUse) -> bool:
        """False when this signature was seen with another body."""
        now = time.monotonic()
        while self._seen and (next(iter(self._seen.values()))[1] < now or len(self._seen) >= LOCAL_LIMIT):
            self._seen.popitem(last=False)
        seen = self._seen.get(use.key)
        if seen is not None and seen[1] >= now:
            return seen[0] == use.body_hash
        self._seen[use.key] = (use.body_hash, now + use.ttl)
        return True
