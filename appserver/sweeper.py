"""The sweep: replies no delivery took, and late sends whose task was lost,
go to the late path. Every worker sweeps; the script hands each due message
to one of them."""

from __future__ import annotations

from functools import cache

from redis.commands.core import Script

from appserver import background
from appserver.app import UNACKED, settings
from appserver.connection import client
from appserver.tasks import queue_late
from common import ledger

INTERVAL = 1.0
BATCH = 100
SETTLED_TTL = ledger.settle_ttl(settings.deliveries, settings.wechat_timeout, settings.lease)


@cache
def _sweep_due() -> Script:
    return client().register_script(ledger.SWEEP_DUE)


def sweep(_: str = "") -> int:
    """Queue the late send of everything due now; returns how many."""
    queued = 0
    while True:
        # Records name their account's queue; settings.queue only serves those written before they did.
        args = [ledger.RECORD_PREFIX, BATCH, SETTLED_TTL, settings.queue, UNACKED]
        owed = _sweep_due()(keys=[ledger.DUE_KEY], args=args)
        for key in owed:
            queue_late(key.decode())
        queued += len(owed)
        if len(owed) < BATCH:
            return queued


background.every(INTERVAL, "sweep", sweep)
