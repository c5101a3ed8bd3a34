"""Scenario 2, the I/O-bound bot: every handler awaits 200 ms, a stand-in for a
database query or an API call."""

import asyncio

from appserver import Bot

bot = Bot()
IO_SECONDS = 0.2


@bot.text()
async def wait_for_io(msg):
    await asyncio.sleep(IO_SECONDS)
    return msg.content
