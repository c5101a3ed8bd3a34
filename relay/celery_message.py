"""Celery task messages, written by hand for an async Redis client.

kombu's publish is blocking, so the relay cannot use it on its IOLoop. It
writes the same envelope kombu's Redis transport writes (task message
protocol v2, JSON body) and pushes it with an async client; the workers are
plain Celery and cannot tell the difference. A test checks this envelope
against the one Celery itself produces.
"""

from __future__ import annotations

import base64
import json
import socket
import uuid
from datetime import UTC, datetime
from typing import Any

ORIGIN = f"relay@{socket.gethostname()}"


def task_message(
    task: str,
    args: list[Any],
    queue: str,
    task_id: str | None = None,
    eta: datetime | None = None,
    delivery_tag: str | None = None,
) -> str:
    """The JSON string to LPUSH onto the queue's list."""
    task_id = task_id or str(uuid.uuid4())
    body = json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
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
        "argsrepr": f"<{len(args)} args>",
        "kwargsrepr": "{}",
        "origin": ORIGIN,
        # The reply travels through the ledger; a second copy in the result
        # backend would cost a write per message for nobody.
        "ignore_result": True,
    }
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
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
            "delivery_tag": delivery_tag or str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope)
