"""The access_token, owned centrally as WeChat asks: one copy in Redis for
every worker, per AppID (or WeCom app), fetched by one process at a time
under a lock, refreshed before it expires.

It comes from stable_token, which hands every caller of one AppID the same
token until it expires: another service of the account that fetches one does
not invalidate ours, nor we theirs (cgi-bin/token mints a new one each time,
ending the one before — the 40001 every SDK's users know). A new token is
forced only when a token WeChat refused comes back from a plain fetch, once
per refused token. A WeCom app's token comes from gettoken, which also
hands back the token still valid."""

from __future__ import annotations

import logging
import time

import httpx
import redis

from appserver.metrics import TOKEN_FETCHES, TOKEN_REFRESHES, errcode
from common.accounts import WECOM, Account
from common.ledger import PREFIX
from common.metric_child import child

log = logging.getLogger("wxrelay.access_token")

# The token WeChat last refused (…:refused): a plain fetch handing it back again forces a new one.
REFUSED_SECONDS = 600
# Refresh this long before WeChat's expiry; the old token stays valid 5 more
# minutes after a refresh, so in-flight sends are never cut off.
EARLY = 300
LOCK_SECONDS = 10
# What WeChat (and WeCom) answer a call made with a token they no longer take.
TOKEN_INVALID = frozenset({40001, 40014, 42001})

# Drop the cached token only if it is still the one that failed, so a burst of
# failures triggers one refresh, not one per sender.
_DISCARD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
"""


class TokenError(Exception):
    def __init__(self, message: str, errcode: int | None = None, errmsg: str = "") -> None:
        super().__init__(message)
        self.errcode = errcode
        self.errmsg = errmsg


def token_key(owner: str) -> str:
    """Where the token of an AppID (or a WeCom app, `corpid:agentid`) is kept."""
    return f"{PREFIX}access_token:{owner}"


class AccessTokens:
    """An official account's token, from stable_token; `account` names it in the metrics."""

    def __init__(
        self, client: redis.Redis, http: httpx.Client, api_base: str, appid: str, secret: str, account: str
    ) -> None:
        self._client = client
        self._http = http
        self._url = f"{api_base.rstrip('/')}/cgi-bin/stable_token"
        # In the body, not the query string: a URL is what proxies and libraries log.
        self._request = {"grant_type": "client_credential", "appid": appid, "secret": secret}
        self._discard = client.register_script(_DISCARD)
        self._owner = appid
        self._account = account
        # A fetch of this process's after it has had the token is a refresh (the metrics' `expiring`).
        self._had_token = False
        self._key = token_key(appid)
        self._lock_key = self._key + ":lock"
        self._refused_key = self._key + ":refused"

    @property
    def key(self) -> str:
        """Where the token is kept: a caller on an event loop reads it there without blocking."""
        return self._key

    def get(self) -> str:
        deadline = time.monotonic() + LOCK_SECONDS + 5
        while time.monotonic() < deadline:
            cached = self._client.get(self._key)
            if cached:
                self._had_token = True
                return cached.decode()
            lock = self._client.lock(self._lock_key, timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS)
            if lock.acquire():
                try:
                    cached = self._client.get(self._key)
                    token = cached.decode() if cached else self._fetch()
                    self._had_token = True
                    return token
                finally:
                    lock.release()
        raise TokenError("timed out waiting for another process to fetch the access_token")

    def ask(self) -> tuple[str, int]:
        """WeChat's token for the account now, and its seconds to live, kept nowhere: stable_token and gettoken
        hand back the one in use, so asking invalidates nothing (the doctor's check of secret and whitelist)."""
        return _token_of(self._request_token(force=False))

    def discard(self, token: str) -> None:
        self._discard(keys=[self._key, self._refused_key], args=[token, REFUSED_SECONDS])

    def _fetch(self) -> str:
        refused = self._client.get(self._refused_key)
        reason = "invalid" if refused is not None else "expiring" if self._had_token else None
        token, expires_in = self._counted(force=False)
        if refused is not None and token == refused.decode():
            log.info("WeChat handed back the access_token it refused: forcing a new one")
            token, expires_in = self._counted(force=True)
        if reason is not None:
            child(TOKEN_REFRESHES, self._account, reason).inc()
        self._client.set(self._key, token, ex=max(expires_in - EARLY, 60))
        self._client.delete(self._refused_key)
        log.info("fetched the access_token of %s (expires in %d s)", self._owner, expires_in)
        return token

    def _counted(self, force: bool) -> tuple[str, int]:
        """One request to WeChat, counted by how it ended."""
        try:
            answer = self._request_token(force)
        except (httpx.HTTPError, ValueError):  # no answer, or not JSON: no errcode came back
            child(TOKEN_FETCHES, self._account, "error", "").inc()
            raise
        try:
            found = _token_of(answer)
        except TokenError:
            child(TOKEN_FETCHES, self._account, "error", errcode(answer.get("errcode"))).inc()
            raise
        child(TOKEN_FETCHES, self._account, "ok", errcode(0)).inc()
        return found

    def _request_token(self, force: bool) -> dict[str, object]:
        return self._http.post(self._url, json={**self._request, "force_refresh": force}).json()


class WeComTokens(AccessTokens):
    """A WeCom app's token, from gettoken: one per app, since each app has its own secret."""

    def __init__(
        self, client: redis.Redis, http: httpx.Client, api_base: str, corpid: str, agentid: int, secret: str,
        account: str,
    ) -> None:  # fmt: skip
        super().__init__(client, http, api_base, f"{corpid}:{agentid}", secret, account)
        self._url = f"{api_base.rstrip('/')}/cgi-bin/gettoken"
        # WeCom takes the secret only in the query string; httpx's own log lines stay off (appserver/app.py).
        self._query = {"corpid": corpid, "corpsecret": secret}

    def _request_token(self, force: bool) -> dict[str, object]:
        # gettoken cannot be forced: it hands back the token still valid, and a new one once that expires.
        return self._http.get(self._url, params=self._query).json()


def owner_of(account: Account, client: redis.Redis, http: httpx.Client) -> AccessTokens | None:
    """The owner of an account's token, on the account's Redis; None without the secret that fetches it."""
    api = account.api_base.rstrip("/")
    if account.kind == WECOM:
        if account.secret and account.agentid:
            return WeComTokens(client, http, api, account.appid, account.agentid, account.secret, account.name)
        return None
    return AccessTokens(client, http, api, account.appid, account.secret, account.name) if account.secret else None


def _token_of(answer: dict[str, object]) -> tuple[str, int]:
    token = answer.get("access_token")
    if not token or not isinstance(token, str):
        errcode, errmsg = answer.get("errcode"), str(answer.get("errmsg", ""))
        raise TokenError(
            f"token refused: errcode={errcode} {errmsg}", errcode if isinstance(errcode, int) else None, errmsg
        )
    return token, int(answer.get("expires_in", 7200))  # type: ignore[call-overload]
