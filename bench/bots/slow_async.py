"""Scenario 5, the slow async bot: its handler is `async def` and awaits (10 s in
`make bench`), a conversation that waits on something, not on a thread.

The message says how long: "slowasync SECONDS ID" (the load generator writes
it), so one start of each system serves every plan. Each run is counted per
MsgId in Redis (`bench:slowasync:runs`), and so are the handlers awaiting at
once (`bench:slowasync:inflight`, its peak `bench:slowasync:peak`), with one
round trip each way on the asyncio client of the loop the handler runs on.
"""

from __future__ import annotations

import asyncio
import weakref

from redis.asyncio import Redis

from appserver import Bot
from common.settings import Settings

bot = Bot()
RUNS_KEY = "bench:slowasync:runs"
INFLIGHT_KEY = "bench:slowasync:inflight"
PEAK_KEY = "bench:slowasync:peak"
LONGEST = 30.0

# KEYS: runs, in flight, peak. ARGV: MsgId.
_BEGIN = """
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local n = redis.call('INCR', KEYS[2])
if n > tonumber(redis.call('GET', KEYS[3]) or '0') then redis.call('SET', KEYS[3], n) end
return n
"""

# An asyncio client belongs to the loop it was made on: one per loop.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Redis] = weakref.WeakKeyDictionary()


def _redis() -> Redis:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = Redis.from_url(Settings.from_env().redis_url)
    return client


def seconds_of(content: str) -> float:
    """How long the message asks the bot to await: its second word, at most LONGEST."""
    words = content.split()
    try:
        return min(max(float(words[1]), 0.0), LONGEST)
    except (IndexError, ValueError):
        return 0.0


@bot.text()
async def slow_async(msg):
    client = _redis()
    await client.eval(_BEGIN, 3, RUNS_KEY, INFLIGHT_KEY, PEAK_KEY, msg.id)
    try:
        await asyncio.sleep(seconds_of(msg.content))
    finally:
        await client.decr(INFLIGHT_KEY)
    return msg.content
