"""What every handler of one relay process shares."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from common.settings import Settings
from relay.broker import Broker
from relay.dispatch import Dispatcher
from relay.listener import ReplyListener
from relay.pipeline import PipelinedRedis
from wechat.crypto import MessageCrypto


@dataclass
class Relay:
    settings: Settings
    client: aioredis.Redis
    broker: Broker
    listener: ReplyListener
    dispatcher: Dispatcher
    crypto: MessageCrypto | None

    @classmethod
    def create(cls, settings: Settings) -> Relay:
        client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True, socket_connect_timeout=2)
        ledger_connection = PipelinedRedis(settings.redis_url, connect_timeout=2)
        broker = Broker(client, ledger_connection, settings.queue, settings.dedupe_ttl)
        listener = ReplyListener(client, broker)
        crypto = None
        if settings.aes_key:
            crypto = MessageCrypto(settings.token, settings.aes_key, settings.appid, settings.aes_key_previous)
        return cls(settings, client, broker, listener, Dispatcher(broker, listener, settings), crypto)
