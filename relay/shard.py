"""One Redis the relay serves accounts on: its ledger connection, its reply channel, its clients.

Accounts may name their own Redis, so a relay holds one shard per Redis its
accounts name, each with everything a delivery touches on that Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from common.settings import Settings
from relay.broker import Broker
from relay.listener import ReplyListener
from relay.pipeline import PipelinedRedis
from relay.seen_signatures import LocalSignatures


@dataclass
class Shard:
    client: aioredis.Redis
    broker: Broker
    listener: ReplyListener
    # Plaintext signatures seen while this Redis could not answer.
    signatures: LocalSignatures

    @classmethod
    def create(cls, url: str, settings: Settings) -> Shard:
        """Raises ValueError for a URL the relay cannot use."""
        timeouts = {"socket_connect_timeout": 2, "socket_timeout": settings.redis_timeout, "socket_keepalive": True}
        client = aioredis.Redis.from_url(url, decode_responses=True, **timeouts)
        ledger_connection = PipelinedRedis(url, connect_timeout=2, timeout=settings.redis_timeout)
        broker = Broker(client, ledger_connection, settings)
        # Its own connection: a subscriber waits on its socket indefinitely by design (the deadline
        # bounds only SUBSCRIBE itself; TCP keepalive notices a peer gone).
        subscriber = PipelinedRedis(url, connect_timeout=2, timeout=settings.redis_timeout)
        listener = ReplyListener(subscriber, broker)
        return cls(client, broker, listener, LocalSignatures())

    @property
    def address(self) -> str:
        return self.broker.ledger.address

    def start(self) -> None:
        self.listener.start()

    async def stop(self) -> None:
        await self.listener.stop()
        self.broker.ledger.close()
        await self.client.aclose()
