"""Celery task messages, written by hand for an async Redis client.

kombu's publish is blocking, so the relay cannot use it on its IOLoop. It
writes the same envelope kombu's Redis transport writes (task message
protocol v2, JSON body) and pushes it with an async client; the workers are
plain Celery and cannot tell the difference. A test checks this envelope
against the one Celery itself produces.
"""

from __future__ import annotations

import base64
import itertools
import json
import socket
import time
import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any

from common import ledger

ORIGIN = f"relay@{socket.gethostname()}"
# Task ids and delivery tags need only be unique: a random prefix of this process's and a count.
# Two uuid4s a message (two system calls, two UUID objects) were 3% of the relay's CPU.
_PREFIX = uuid.uuid4().hex
_COUNT = itertools.count()


def new_id() -> str:
    return f"{_PREFIX}-{next(_COUNT):x}"


# Stand-ins for what differs between two messages of one task to one queue: the envelope around
# them is written once (a json.dumps of the whole was a twentieth of the relay's CPU a message).
_ID, _TAG, _BODY, _QUEUED = "<<task-id>>", "<<delivery-tag>>", "<<body>>", "<<queued-at>>"
# When the message was queued (Unix time, s): what the workers' wxrelay_queue_oldest_seconds reads of
# the oldest message waiting (appserver/queue_metrics.py), and the sweep of a long queue (common/ledger.py).
# Celery ignores headers it does not know.
QUEUED_AT = ledger.QUEUED_AT
_QUEUED_JSON = json.dumps(_QUEUED)
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_message(
    task: str,
    args: list[Any],
    queue: str,
    task_id: str | None = None,
    eta: datetime | None = None,
    delivery_tag: str | None = None,
) -> str:
    """The JSON string to LPUSH onto the queue's list."""
    task_id = task_id or new_id()
    tag = delivery_tag or new_id()
    body = base64.b64encode(json.dumps([args, {}, _EMBED]).encode()).decode()
    queued = round(time.time(), 3)
    if eta is not None:
        return json.dumps(_envelope(task, len(args), queue, task_id, tag, body, eta, queued))
    return (
        _template(task, len(args), queue)
        .replace(_ID, _json_text(task_id))
        .replace(_TAG, _json_text(tag))
        .replace(_BODY, body)  # base64: nothing in it to escape
        .replace(_QUEUED_JSON, repr(queued))  # a number: the stand-in's quotes go too
    )


def _json_text(value: str) -> str:
    """`value` as it reads inside a JSON string."""
    return json.dumps(value)[1:-1]


@cache
def _template(task: str, arity: int, queue: str) -> str:
    return json.dumps(_envelope(task, arity, queue, _ID, _TAG, _BODY, None, _QUEUED))


def _envelope(
    task: str, arity: int, queue: str, task_id: str, tag: str, body: str, eta: datetime | None, queued: float | str
) -> dict[str, Any]:
    headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": eta.astimezone(UTC).isoformat() if eta else None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": f"<{arity} args>",
        "kwargsrepr": "{}",
        "origin": ORIGIN,
        # The reply travels through the ledger; a second copy in the result
        # backend would cost a write per message for nobody.
        "ignore_result": True,
        QUEUED_AT: queued,
    }
    return {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": tag,
        },
    }
