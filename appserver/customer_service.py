"""Late replies through WeChat's customer-service API (message/custom/send)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from appserver.access_token import AccessTokens, TokenError
from common.ledger import PREFIX

log = logging.getLogger("wxrelay.customer_service")

STATS_KEY = PREFIX + "stats"
TOKEN_INVALID = {40001, 40014, 42001}
# WeChat's "system busy, try again"; every other errcode is a refusal that
# no retry will change (45015 out of the 48-hour window, 48001 no
# permission, 45047 quota...).
BUSY = -1


@dataclass(frozen=True)
class SendResult:
    outcome: str  # sent | refused | retry (the network, or WeChat busy)
    errcode: int = 0
    detail: str = ""


class CustomerService:
    def __init__(self, client: redis.Redis, api_base: str, appid: str, secret: str | None) -> None:
        self._client = client
        self._url = f"{api_base.rstrip('/')}/cgi-bin/message/custom/send"
        self._http = httpx.Client(timeout=10.0)
        self._tokens = AccessTokens(client, self._http, api_base, appid, secret) if secret else None

    @property
    def configured(self) -> bool:
        return self._tokens is not None

    def token(self) -> str:
        """The shared access_token, fetched if need be: before a send begins, so a
        send is never left half-begun waiting on the token. Raises TokenError."""
        if self._tokens is None:
            raise TokenError("no WECHAT_APPSECRET")
        try:
            return self._tokens.get()
        except httpx.HTTPError as exc:
            raise TokenError(f"token fetch failed: {exc or type(exc).__name__}") from None

    def send(self, payload: dict[str, Any], token: str) -> SendResult:
        """One attempt at delivering a late reply; never raises for WeChat's or the network's failures."""
        # WeChat wants UTF-8 JSON, not \\u escapes.
        body = json.dumps(payload, ensure_ascii=False).encode()
        try:
            for attempt in range(2):
                if attempt:
                    token = self.token()
                answer = self._http.post(self._url, params={"access_token": token}, content=body).json()
                errcode = int(answer.get("errcode", 0))
                if errcode in TOKEN_INVALID:
                    self._tokens.discard(token)
                    continue
                break
        except (httpx.HTTPError, ValueError, TokenError) as exc:
            return SendResult("retry", detail=str(exc) or type(exc).__name__)
        if errcode == BUSY or errcode in TOKEN_INVALID:
            return SendResult("retry", errcode, answer.get("errmsg", ""))
        if errcode:
            return SendResult("refused", errcode, answer.get("errmsg", ""))
        return SendResult("sent")

    def count(self, stat: str) -> None:
        self._client.hincrby(STATS_KEY, stat, 1)
