"""Who may call the callback URL (WXRELAY_ALLOWED_SOURCES), by the client's address.

The address is the socket's peer, or, when the peer is nginx (a trusted
proxy), the X-Real-IP nginx sets: a header anyone else sends is ignored.
WeChat's own addresses come from Redis, where a worker keeps the list
WeChat's getcallbackip API gives; a relay reads it every REFRESH seconds and
keeps the last list it read while Redis is away.
"""

from __future__ import annotations

import ipaddress
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from tornado.httputil import HTTPHeaders
from tornado.ioloop import PeriodicCallback

from common.settings import WECHAT_SOURCES, Settings
from common.wechat_addresses import KEY, Network, WeChatAddresses

log = logging.getLogger("wxrelay.relay")

REFRESH = 10.0


def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries if entry != WECHAT_SOURCES)


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


class SourceFilter:
    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        self.enabled = bool(settings.allowed_sources)
        self.wants_wechat = WECHAT_SOURCES in settings.allowed_sources
        self._static = _networks(settings.allowed_sources)
        self._proxies = _networks(settings.trusted_proxies)
        self._client = client
        self.wechat: WeChatAddresses | None = None
        self._refresher: PeriodicCallback | None = None

    def _client_address(self, peer: str, headers: HTTPHeaders) -> str:
        if _within(peer, self._proxies):
            return headers.get("X-Real-IP", peer)
        return peer

    def admits(self, peer: str, headers: HTTPHeaders) -> bool:
        """Whether a request from `peer` (the connection's address) with these headers may come in."""
        if not self.enabled:
            return True
        wechat = self.wechat.networks if self.wechat is not None else ()
        return _within(self._client_address(peer, headers), self._static + wechat)

    async def start(self) -> None:
        """Read WeChat's addresses now, then every REFRESH seconds (only when they are wanted)."""
        if self.wants_wechat:
            await self.refresh()
            self._refresher = PeriodicCallback(self.refresh, REFRESH * 1000)
            self._refresher.start()

    def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.stop()

    async def refresh(self) -> None:
        try:
            stored = await self._client.get(KEY)
        except RedisError as exc:
            log.debug("WeChat's addresses not read from Redis: %s", exc)
            return
        if stored:
            self.wechat = WeChatAddresses.decode(stored)

    def problem(self) -> str | None:
        """What /healthz says when WeChat's addresses are wanted and not known."""
        if not self.wants_wechat:
            return None
        if self.wechat is None:
            return "WeChat's callback addresses not fetched yet (workers fetch them): refusing all"
        age = time.time() - self.wechat.fetched_at
        if age > 86400:
            return f"WeChat's callback addresses are {age / 3600:.0f} h old: the workers cannot fetch them"
        return None
