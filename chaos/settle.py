"""The end of a scenario: every message answered at least once, and the ledger owing nothing.

Only then are replies counted — a duplicate can only show once nothing is
left to send. Nothing here sleeps to synchronise: it polls the state it waits
for, with a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import httpx
import redis

from chaos.appliance import QUEUE, Appliance
from chaos.wechat import Message, wait_finished
from common import ledger
from simulator.api import FakeWeChatAPI

DEADLINE = 120.0
POLL = 0.2
UNACKED = "unacked"
OWED_STATES = (ledger.LATE, ledger.SENDING)


def owed(appliance: Appliance) -> list[str]:
    """What the ledger still owes, in words; empty when nothing."""
    client = appliance.redis()
    try:
        left = []
        if due := client.zcard(ledger.DUE_KEY):
            left.append(f"{due} in the due set")
        if queued := client.llen(QUEUE):
            left.append(f"{queued} tasks queued")
        if unacked := client.hlen(UNACKED):
            left.append(f"{unacked} tasks unacknowledged")
        keys = list(client.scan_iter(match=ledger.RECORD_PREFIX + "*", count=500))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "state")
        states = [state for state in pipe.execute() if state in OWED_STATES]
        if states:
            left.append(f"{len(states)} records late or sending")
    except redis.RedisError as exc:
        return [f"Redis: {exc}"]
    for port in appliance.relay_ports:
        try:
            spooled = appliance.metric(port, "wxrelay_spool_depth")
        except httpx.HTTPError as exc:
            left.append(f"relay :{port}: {type(exc).__name__}")
            continue
        if spooled:
            left.append(f"{spooled:.0f} spooled by relay :{port}")
    return left


def unanswered(messages: Iterable[Message], api: FakeWeChatAPI) -> list[Message]:
    return [m for m in messages if m.passive is None and not api.sends_to(m.user)]


def settle(appliance: Appliance, api: FakeWeChatAPI, messages: list[Message], deadline: float = DEADLINE) -> list[str]:
    """Wait until it is over; returns what was still outstanding at the deadline (empty: settled)."""
    until = time.monotonic() + deadline
    if not wait_finished(messages, deadline):
        return [f"{sum(not m.finished.is_set() for m in messages)} senders still delivering"]
    while True:
        waiting = unanswered(messages, api)
        left = owed(appliance) if not waiting else []
        if not waiting and not left:
            return []
        if time.monotonic() > until:
            if waiting:
                left = [f"{len(waiting)} messages unanswered", *owed(appliance)]
            return left
        time.sleep(POLL)
