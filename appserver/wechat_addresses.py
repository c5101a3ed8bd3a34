"""Fetch WeChat's callback addresses (getcallbackip) for the relays' allow-list
(WXRELAY_ALLOWED_SOURCES=wechat), with the shared access_token, and keep them
in Redis. Every worker looks each CHECK seconds; whoever finds the list older
than REFRESH fetches it. A failed fetch keeps the last list: WeChat's
addresses change seldom, and locking WeChat out would be worse."""

from __future__ import annotations

import logging
import time

import httpx

from appserver import background
from appserver.access_token import AccessTokens
from appserver.app import serving, settings
from appserver.connection import client
from appserver.customer_service import TOKEN_INVALID
from common.accounts import OFFICIAL, Account
from common.settings import WECHAT_SOURCES
from common.wechat_addresses import KEY, WeChatAddresses

log = logging.getLogger("wxrelay.wechat_addresses")

REFRESH = 3600.0
CHECK = 60.0


class AddressError(Exception):
    pass


def refresh(tokens: AccessTokens, http: httpx.Client, url: str) -> None:
    stored = client().get(KEY)
    if stored and time.time() - WeChatAddresses.decode(stored).fetched_at < REFRESH:
        return
    token = tokens.get()
    answer = http.get(url, params={"access_token": token}).json()
    errcode = int(answer.get("errcode", 0))
    if errcode in TOKEN_INVALID:
        tokens.discard(token)
    if errcode or not isinstance(answer.get("ip_list"), list):
        raise AddressError(f"getcallbackip refused: errcode={errcode} {answer.get('errmsg', '')}")
    addresses = WeChatAddresses.parse(answer["ip_list"], time.time())
    if not addresses.networks:
        raise AddressError("getcallbackip listed no address: the last list is kept")
    client().set(KEY, addresses.encode())
    log.info("WeChat's callback addresses: %d networks, for the relays' allow-list", len(addresses.networks))


def _start(account: Account) -> None:
    http = httpx.Client(timeout=10.0)
    tokens = AccessTokens(client(), http, account.api_base, account.appid, account.secret or "", account.name)
    url = f"{account.api_base.rstrip('/')}/cgi-bin/getcallbackip"
    background.every(CHECK, "fetching WeChat's callback addresses", lambda _: refresh(tokens, http, url))


# Any official account's token may ask: WeChat's addresses are the same for all.
_asking = next((a for a in serving.accounts.values() if a.kind == OFFICIAL and a.secret), None)
if WECHAT_SOURCES in settings.allowed_sources and _asking is not None:
    _start(_asking)
