"""wechatpy's WeChatClient on the appliance's one access_token, for the endpoints the helpers of
appserver/wechat_api.py leave out: `wechatpy_for(msg.api).qrcode.create(...)`.

wechatpy keeps its token in a session storage and, when WeChat refuses it, calls `fetch_access_token`
(cgi-bin/token: a new token, which ends the one every other process of the account uses) and tries
again, with no limit. This client's storage serves the token of its shared owner; a refused token is
discarded there, compare-and-delete, so a burst of refusals costs one fetch (under the owner's lock),
and the call is tried once more; `fetch_access_token` only ever asks the owner. The client never
holds the AppSecret.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from wechatpy import WeChatClient
from wechatpy.exceptions import WeChatClientException
from wechatpy.session.memorystorage import MemoryStorage

from appserver.access_token import TOKEN_INVALID
from appserver.wechat_api import TIMEOUT, WeChatAPI


class _OwnersStorage(MemoryStorage):  # type: ignore[misc]
    """The access_token comes from its owner, and only the owner writes it; other keys (the jsapi
    ticket) stay in this process's memory, as wechatpy's default storage keeps them."""

    def __init__(self, api: WeChatAPI, token_key: str) -> None:
        super().__init__()
        self._api = api
        self._token_key = token_key

    def get(self, key: str, default: Any = None) -> Any:
        return self._api.token() if key == self._token_key else super().get(key, default)

    def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        if key != self._token_key:
            super().set(key, value, ttl)

    def delete(self, key: str) -> None:
        if key != self._token_key:
            super().delete(key)


class SharedTokenClient(WeChatClient):  # type: ignore[misc]
    def __init__(self, api: WeChatAPI, timeout: float = TIMEOUT) -> None:
        self._tokens = api.tokens  # an account without a secret fails here, not at its first call
        assert api.account is not None
        appid = api.account.appid
        super().__init__(appid, "", session=_OwnersStorage(api, f"{appid}_access_token"), timeout=timeout)
        # wechatpy's retry would go through `fetch_access_token` without end: `_request` retries once instead.
        self.auto_retry = False
        self.API_BASE_URL = api.url("cgi-bin/")
        self._api = api

    def fetch_access_token(self) -> dict[str, Any]:
        return {"access_token": self._api.token()}

    def _request(self, method: str, url_or_endpoint: str, **kwargs: Any) -> Any:
        # wechatpy writes the token it used into this dict: the one to discard if WeChat refuses it.
        params = dict(kwargs.pop("params", None) or {})
        try:
            return super()._request(method, url_or_endpoint, params=params, **kwargs)
        except WeChatClientException as exc:
            if exc.errcode not in TOKEN_INVALID or "access_token" not in params:
                raise
        self._tokens.discard(params.pop("access_token"))
        return super()._request(method, url_or_endpoint, params=params, **kwargs)


@cache
def wechatpy_for(api: WeChatAPI) -> SharedTokenClient:
    """One wechatpy client per account and process, on the account's shared token."""
    return SharedTokenClient(api)
