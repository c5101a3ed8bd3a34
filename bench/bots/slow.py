"""Scenario 3, the slow bot: 8 s a message, longer than one WeChat delivery.

Every execution is counted per MsgId in Redis (`bench:slow:runs`), so the
benchmark can tell a message that ran twice from one that ran once.
"""

import time
from functools import cache

import redis

from appserver import Bot
from common.settings import Settings

bot = Bot()
SLOW_SECONDS = 8.0
RUNS_KEY = "bench:slow:runs"


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(Settings.from_env().redis_url)


@bot.text()
def slow(msg):
    _redis().hincrby(RUNS_KEY, msg.id, 1)
    time.sleep(SLOW_SECONDS)
    return msg.content
