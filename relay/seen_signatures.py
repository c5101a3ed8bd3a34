"""Plaintext mode's guard against a replayed signature.

In plaintext mode WeChat signs only its Token, the timestamp and the nonce,
not the body: whoever sees one callback URL (a proxy's log, a shared screen)
could post any body under it until its timestamp goes stale. So each
signature is remembered, with the hash of its body, for as long as its
timestamp is accepted: WeChat's own retries repeat both and pass; another
body under a signature already seen is refused. Safe mode needs none of this:
its msg_signature covers the encrypted body.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

from redis.exceptions import RedisError

from common.ledger import PREFIX
from relay.pipeline import PipelinedRedis, Script

KEY_PREFIX = PREFIX + "sig:"
# SET NX with GET needs Redis 7; Ubuntu 22.04 has 6.0. One round trip either way.
_REMEMBER = Script(
    """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""
)
# While Redis cannot answer, each relay remembers what it saw itself, up to this many.
LOCAL_LIMIT = 100_000


def _digest(*parts: str | bytes) -> str:
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update(part.encode() if isinstance(part, str) else part)
        hashed.update(b"\n")
    # 128 bits: a collision is as unlikely as a forged signature, at half the memory.
    return hashed.hexdigest()[:32]


class SeenSignatures:
    def __init__(self, ledger: PipelinedRedis, window: int) -> None:
        self._ledger = ledger
        self._window = window
        self._local: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def admits(self, timestamp: str, nonce: str, signature: str, body: bytes) -> bool:
        """False when this signature was seen with another body; a checked, fresh timestamp is assumed."""
        key = KEY_PREFIX + _digest(timestamp, nonce, signature)
        body_hash = _digest(body)
        # The timestamp is accepted until it is `window` old: remembered so long, and no longer.
        ttl = max(1, int(timestamp) + self._window - int(time.time()) + 1)
        try:
            return bool(await self._ledger.evalsha(_REMEMBER, [key], [body_hash, ttl]))
        except RedisError:
            return self._admits_locally(key, body_hash, ttl)

    def _admits_locally(self, key: str, body_hash: str, ttl: int) -> bool:
        now = time.monotonic()
        while self._local and (next(iter(self._local.values()))[1] < now or len(self._local) >= LOCAL_LIMIT):
            self._local.popitem(last=False)
        seen = self._local.get(key)
        if seen is not None and seen[1] >= now:
            return seen[0] == body_hash
        self._local[key] = (body_hash, now + ttl)
        return True
