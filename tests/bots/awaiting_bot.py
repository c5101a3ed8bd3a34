"""Async handlers that await for as long as they are told, counting in Redis how
many await at once, how often each ran, and how many were cancelled."""

from __future__ import annotations

import asyncio
import os
import re
from functools import cache

import redis

from appserver import Bot

bot = Bot()
IN_FLIGHT = "test:awaiting:in_flight"
PEAK = "test:awaiting:peak"
CANCELLED = "test:awaiting:cancelled"
# When set, how long every handler starting now awaits, whatever its message says.
HOLD = "test:awaiting:hold"
_ENTER = (
    "local n = redis.call('INCR', KEYS[1]) "
    "if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end return n"
)


@cache
def _redis() -> redis.Redis:
    # Made on first use: the tests import the keys above without a Redis of their own.
    return redis.Redis.from_url(os.environ["WXRELAY_REDIS_URL"])


def ran(msg: object) -> None:
    _redis().incr(f"test:runs:{msg.dedupe_key}")  # type: ignore[attr-defined]


@bot.text(re.compile(r"^await (\d+(?:\.\d+)?)$"))
async def wait(msg):
    ran(msg)
    seconds = float(_redis().get(HOLD) or msg.content.split()[1])
    _redis().eval(_ENTER, 2, IN_FLIGHT, PEAK)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _redis().incr(CANCELLED)
        raise
    finally:
        _redis().decr(IN_FLIGHT)
    return f"awaited {msg.content}"


@bot.text("async boom")
async def boom(msg):
    ran(msg)
    await asyncio.sleep(0.05)
    raise RuntimeError("an async handler failed on purpose")


@bot.fallback
def echo(msg):
    ran(msg)
    return f"echo: {msg.content}"
