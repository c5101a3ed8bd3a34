"""Bots of the accounts tests: each says whose bot answered; `sleepy` and
each bot's "hold" hold their handler slot until the test lets go (or 30 s pass)."""

from __future__ import annotations

import os
import re
import time

import redis

from appserver import Bot

_redis = redis.Redis.from_url(os.environ["WXRELAY_REDIS_URL"])
RELEASE_KEY = "test:accounts:release"


def _named(name: str) -> Bot:
    bot = Bot()

    @bot.text(re.compile(r"^slow (\d+(?:\.\d+)?)( .*)?$"))
    def slow(msg):
        time.sleep(float(msg.content.split()[1]))
        return f"{name} bot: {msg.content}"

    @bot.text("hold")
    def hold(msg):
        _wait_for_release()
        return f"{name} bot: held"

    @bot.text()
    def answer(msg):
        _redis.incr(f"test:runs:{name}:{msg.dedupe_key}")
        return f"{name} bot: {msg.content}"

    return bot


def _wait_for_release() -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _redis.exists(RELEASE_KEY):
        time.sleep(0.05)


shop = _named("shop")
blog = _named("blog")
staff = _named("staff")
sleepy = Bot()


@sleepy.text()
def block(msg):
    _redis.incr("test:accounts:sleepy_started")
    _wait_for_release()
    return "slept"
