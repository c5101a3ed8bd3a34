"""BASELINE — the Celery app of both baseline designs, with Celery's defaults.

`celery -A bench.baselines.celery_app worker`: prefork, one process per core,
prefetch multiplier 4, results stored in Redis, the worker's default log level.
Environment: BENCH_BASELINE_REDIS_URL (broker and results), BENCH_BOT (the
bot, as WXRELAY_BOT spells it).
"""

from __future__ import annotations

import os
from functools import cache

import redis
from celery import Celery

# The appliance's bot framework, so both sides run the very same bot code.
from appserver.bot import Bot
from appserver.handling import handle
from appserver.loader import load_bot

REDIS_URL = os.environ["BENCH_BASELINE_REDIS_URL"]
TASK = "baseline.reply"

app = Celery("baseline", broker=REDIS_URL, backend=REDIS_URL, set_as_current=True)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)


@cache
def _bot() -> Bot:
    return load_bot(os.environ["BENCH_BOT"])


@cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


@app.task(name=TASK)
def reply(xml: str) -> str:
    """Run the bot on one message and return the reply XML ('' for none)."""
    return handle(xml, _bot(), _client(), 86400, 60).xml
