"""The access_token, owned centrally as WeChat asks: one copy in Redis for
every worker, fetched by one process at a time under a lock, refreshed
before it expires."""

from __future__ import annotations

import logging
import time

import httpx
import redis

from common.ledger import PREFIX

log = logging.getLogger("wxrelay.access_token")

TOKEN_KEY = PREFIX + "access_token"
LOCK_KEY = PREFIX + "access_token:lock"
# Refresh this long before WeChat's expiry; the old token stays valid 5 more
# minutes after a refresh, so in-flight sends are never cut off.
EARLY = 300
LOCK_SECONDS = 10

# Drop the cached token only if it is still the one that failed, so a burst of
# failures triggers one refresh, not one per sender.
_DISCARD = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class TokenError(Exception):
    pass


class AccessTokens:
    def __init__(self, client: redis.Redis, http: httpx.Client, api_base: str, appid: str, secret: str) -> None:
        self._client = client
        self._http = http
        self._url = f"{api_base.rstrip('/')}/cgi-bin/token"
        self._params = {"grant_type": "client_credential", "appid": appid, "secret": secret}
        self._discard = client.register_script(_DISCARD)

    def get(self) -> str:
        deadline = time.monotonic() + LOCK_SECONDS + 5
        while time.monotonic() < deadline:
            cached = self._client.get(TOKEN_KEY)
            if cached:
                return cached.decode()
            lock = self._client.lock(LOCK_KEY, timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS)
            if lock.acquire():
                try:
                    cached = self._client.get(TOKEN_KEY)
                    return cached.decode() if cached else self._fetch()
                finally:
                    lock.release()
        raise TokenError("timed out waiting for another process to fetch the access_token")

    def discard(self, token: str) -> None:
        self._discard(keys=[TOKEN_KEY], args=[token])

    def _fetch(self) -> str:
        answer = self._http.get(self._url, params=self._params).json()
        token = answer.get("access_token")
        if not token:
            raise TokenError(f"token refused: errcode={answer.get('errcode')} {answer.get('errmsg', '')}")
        expires_in = int(answer.get("expires_in", 7200))
        self._client.set(TOKEN_KEY, token, ex=max(expires_in - EARLY, 60))
        log.info("fetched a new access_token (expires in %d s)", expires_in)
        return token
