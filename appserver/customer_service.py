"""Late replies through WeChat's customer-service API (message/custom/send)."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import redis

from appserver.access_token import AccessTokens, TokenError
from common.ledger import PREFIX

log = logging.getLogger("wxrelay.customer_service")

STATS_KEY = PREFIX + "stats"
TOKEN_INVALID = {40001, 40014, 42001}


class CustomerService:
    def __init__(self, client: redis.Redis, api_base: str, appid: str, secret: str | None) -> None:
        self._client = client
        self._url = f"{api_base.rstrip('/')}/cgi-bin/message/custom/send"
        self._http = httpx.Client(timeout=10.0)
        self._tokens = AccessTokens(client, self._http, api_base, appid, secret) if secret else None

    def send(self, payload: dict[str, Any], dedupe_key: str) -> bool:
        """Deliver one late reply; failures are logged and counted, never raised."""
        if self._tokens is None:
            return self._count("late_unconfigured", "no WECHAT_APPSECRET: late reply to %s dropped", dedupe_key)
        # WeChat wants UTF-8 JSON, not \u escapes.
        body = json.dumps(payload, ensure_ascii=False).encode()
        try:
            for _ in range(2):
                token = self._tokens.get()
                answer = self._http.post(self._url, params={"access_token": token}, content=body).json()
                errcode = answer.get("errcode", 0)
                if errcode in TOKEN_INVALID:
                    self._tokens.discard(token)
                    continue
                break
        except (httpx.HTTPError, ValueError, TokenError) as exc:
            return self._count("late_failed", "late reply to %s failed: %s", dedupe_key, exc)
        if errcode:
            return self._count(
                "late_refused", "late reply to %s refused: %s %s", dedupe_key, errcode, answer.get("errmsg", "")
            )
        self._client.hincrby(STATS_KEY, "late_sent", 1)
        log.info("late reply to %s sent through the customer-service API", dedupe_key)
        return True

    def _count(self, stat: str, message: str, *args: object) -> bool:
        log.warning(message, *args)
        self._client.hincrby(STATS_KEY, stat, 1)
        return False
