"""WeChat's callback addresses (its getcallbackip API), as a worker stores
them in Redis for every relay to read: JSON, the list and when it was fetched."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from common.ledger import PREFIX

KEY = PREFIX + "wechat_addresses"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class WeChatAddresses:
    networks: tuple[Network, ...]
    fetched_at: float

    @classmethod
    def parse(cls, ip_list: list[str], fetched_at: float) -> WeChatAddresses:
        """WeChat lists addresses and networks ("101.226.103.0/25"); what does not parse is dropped."""
        networks = []
        for entry in ip_list:
            try:
                networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
            except ValueError:
                continue
        return cls(tuple(networks), fetched_at)

    def encode(self) -> str:
        return json.dumps({"ip_list": [str(network) for network in self.networks], "fetched_at": self.fetched_at})

    @classmethod
    def decode(cls, text: str) -> WeChatAddresses:
        data = json.loads(text)
        return cls.parse(data["ip_list"], float(data["fetched_at"]))
