"""What every handler of one relay process shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from common.settings import Settings
from relay.broker import Broker
from relay.dispatch import Dispatcher
from relay.listener import ReplyListener
from relay.pipeline import PipelinedRedis
from relay.replay import Replayer
from relay.seen_signatures import SeenSignatures
from relay.sources import SourceFilter
from relay.spool import Spool
from wechat.crypto import MessageCrypto


@dataclass
class Relay:
    settings: Settings
    client: aioredis.Redis
    broker: Broker
    listener: ReplyListener
    dispatcher: Dispatcher
    spool: Spool
    replayer: Replayer
    crypto: MessageCrypto | None
    signatures: SeenSignatures
    sources: SourceFilter

    @classmethod
    def create(cls, settings: Settings, port: int) -> Relay:
        timeouts = {"socket_connect_timeout": 2, "socket_timeout": settings.redis_timeout, "socket_keepalive": True}
        client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True, **timeouts)
        ledger_connection = PipelinedRedis(settings.redis_url, connect_timeout=2, timeout=settings.redis_timeout)
        broker = Broker(client, ledger_connection, settings)
        # Its own client: a subscriber waits on its socket indefinitely by design.
        subscriber = aioredis.Redis.from_url(
            settings.redis_url, decode_responses=True, socket_connect_timeout=2, socket_keepalive=True
        )
        listener = ReplyListener(subscriber, broker)
        spool = Spool(Path(settings.spool_dir) / f"relay-{port}.sqlite3")
        dispatcher = Dispatcher(broker, listener, spool, settings)
        crypto = None
        if settings.aes_key:
            crypto = MessageCrypto(settings.token, settings.aes_key, settings.appid, settings.aes_key_previous)
        return cls(
            settings,
            client,
            broker,
            listener,
            dispatcher,
            spool,
            Replayer(broker, spool, dispatcher),
            crypto,
            SeenSignatures(ledger_connection, settings.timestamp_window),
            SourceFilter(settings, client),
        )
