"""`msg.session`: a per-user dict kept in Redis as JSON, for conversational bots."""

from __future__ import annotations

import json
from collections.abc import Iterator, MutableMapping
from typing import Any

import redis

from common.ledger import session_key


class Session(MutableMapping[str, Any]):
    """Loaded on first use and saved after the handler if it changed, so a
    bot that never touches its sessions costs no Redis round trip."""

    def __init__(self, client: redis.Redis, openid: str, ttl: int) -> None:
        self._client = client
        self._key = session_key(openid)
        self._ttl = ttl
        self._data: dict[str, Any] | None = None
        self._loaded_json = ""

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            raw = self._client.get(self._key)
            self._loaded_json = raw.decode() if raw else "{}"
            self._data = json.loads(self._loaded_json)
        return self._data

    def __getitem__(self, name: str) -> Any:
        return self._load()[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._load()[name] = value

    def __delitem__(self, name: str) -> None:
        del self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def save(self) -> None:
        if self._data is None:
            return
        # Comparing the JSON also catches changes inside nested values.
        current = json.dumps(self._data, ensure_ascii=False, sort_keys=True)
        if current == json.dumps(json.loads(self._loaded_json), ensure_ascii=False, sort_keys=True):
            return
        if self._data:
            self._client.set(self._key, current, ex=self._ttl)
        else:
            self._client.delete(self._key)
