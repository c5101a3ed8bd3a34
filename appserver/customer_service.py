"""Late replies: an official account's through the customer-service API
(message/custom/send), a WeCom app's through message/send."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from appserver.access_token import TOKEN_INVALID, TokenError, owner_of
from common.accounts import WECOM, Account
from common.ledger import stats_key

log = logging.getLogger("wxrelay.customer_service")

# WeChat's "system busy, try again"; every other errcode is a refusal that
# no retry will change (45015 out of the 48-hour window, 48001 and 76022 no
# permission, 45047 quota...).
BUSY = -1


@dataclass(frozen=True)
class SendResult:
    outcome: str  # sent | refused | retry (the network, or WeChat busy)
    errcode: int = 0
    detail: str = ""


class CustomerService:
    def __init__(self, client: redis.Redis, account: Account) -> None:
        self._client = client
        self._stats = stats_key(account.name)
        self._http = httpx.Client(timeout=10.0)
        api = account.api_base.rstrip("/")
        self._tokens = owner_of(account, client, self._http)
        self._agentid = account.agentid
        self._url = f"{api}/cgi-bin/message/send" if account.kind == WECOM else f"{api}/cgi-bin/message/custom/send"

    @property
    def configured(self) -> bool:
        return self._tokens is not None

    def token(self) -> str:
        """The shared access_token, fetched if need be: before a send begins, so a
        send is never left half-begun waiting on the token. Raises TokenError."""
        if self._tokens is None:
            raise TokenError("no secret configured")
        try:
            return self._tokens.get()
        except httpx.HTTPError as exc:
            raise TokenError(f"token fetch failed: {exc or type(exc).__name__}") from None

    def send(self, payload: dict[str, Any], token: str) -> SendResult:
        """One attempt at delivering a late reply; never raises for WeChat's or the network's failures."""
        if self._agentid is not None:
            payload = {**payload, "agentid": self._agentid}
        # WeChat wants UTF-8 JSON, not \\u escapes.
        body = json.dumps(payload, ensure_ascii=False).encode()
        try:
            for attempt in range(2):
                if attempt:
                    token = self.token()
                answer = self._http.post(self._url, params={"access_token": token}, content=body).json()
                errcode = int(answer.get("errcode", 0))
                if errcode in TOKEN_INVALID:
                    self._tokens.discard(token)  # type: ignore[union-attr]
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
        self._client.hincrby(self._stats, stat, 1)
