"""The bot the end-to-end tests run: each handler counts its executions in
Redis, so a test can prove a message ran exactly once."""

from __future__ import annotations

import asyncio
import os
import re
import time

import redis

from appserver import Bot, replies

bot = Bot()
_redis = redis.Redis.from_url(os.environ["WXRELAY_REDIS_URL"])


def ran(msg: object) -> None:
    _redis.incr(f"test:runs:{msg.dedupe_key}")  # type: ignore[attr-defined]


@bot.text("boom")
def boom(msg):
    ran(msg)
    raise RuntimeError("the handler failed on purpose")


@bot.text(re.compile(r"^slow (\d+(?:\.\d+)?)$"))
def slow(msg):
    ran(msg)
    time.sleep(float(msg.content.split()[1]))
    return f"slow reply to {msg.content}"


@bot.text(re.compile(r"^async slow (\d+(?:\.\d+)?)$"))
async def async_slow(msg):
    ran(msg)
    await asyncio.sleep(float(msg.content.split()[2]))
    return f"async slow reply to {msg.content}"


@bot.text(re.compile(r"^async "))
async def wait_async(msg):
    ran(msg)
    await asyncio.sleep(0.05)
    return f"async reply to {msg.content}"


@bot.text("count")
def count(msg):
    ran(msg)
    msg.session["count"] = msg.session.get("count", 0) + 1
    return f"count={msg.session['count']}"


@bot.text("news")
def news(msg):
    ran(msg)
    return replies.News([replies.Article("Title", "Description", "http://p/1.png", "http://u/1")])


@bot.text("silent")
def silent(msg):
    ran(msg)
    return None


@bot.text()
def echo(msg):
    ran(msg)
    return f"echo: {msg.content}"


@bot.subscribe
def welcome(msg):
    ran(msg)
    return "welcome"


@bot.click("MENU_A")
def menu_a(msg):
    ran(msg)
    return "clicked A"


@bot.scan
def scanned(msg):
    ran(msg)
    return f"scanned {msg.scene}"


@bot.event("location")
def where(msg):
    ran(msg)
    return f"at {msg.latitude},{msg.longitude}"


@bot.image
def image(msg):
    ran(msg)
    return replies.Image(msg.media_id)


@bot.fallback
def anything(msg):
    ran(msg)
    return f"fallback: {msg.type}"
