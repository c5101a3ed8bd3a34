"""What /metrics shows (Prometheus text format)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from tornado.ioloop import PeriodicCallback

REJECTED = Counter(
    "wxrelay_rejected", "Requests refused before dispatch, by account and reason.", ["account", "reason"]
)
MESSAGES = Counter(
    "wxrelay_messages",
    "Deliveries of valid messages, by account and how they ended: passive (reply written), cached (a retry served "
    "from the ledger), success (no reply, or out of time), late (reply goes by the API), dropped "
    "(WeChat hung up), spooled (Redis could not take it: kept on disk, answered `success`, its reply goes late).",
    ["account", "outcome"],
)
LEDGER_ERRORS = Counter(
    "wxrelay_ledger_errors",
    "Ledger calls Redis could not serve, by why: down (refused or lost), timeout, full (maxmemory reached).",
    ["reason"],
)
SPOOLED = Counter("wxrelay_spooled", "Messages written to the relay's spool because Redis could not take them.")
SPOOL_DEPTH = Gauge("wxrelay_spool_depth", "Messages in the relay's spool, waiting for Redis.")
REPLAYED = Counter("wxrelay_replayed", "Spooled messages handed to the ledger once Redis was back.")
HELD = Gauge("wxrelay_deliveries_held", "Deliveries this relay holds open right now, waiting for their reply.")
VERIFIED = Counter("wxrelay_url_verifications", "Successful GET URL verifications.", ["account"])
REPLY_SECONDS = Histogram(
    "wxrelay_reply_seconds",
    "Time from request to answer for valid messages, by account.",
    ["account"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 4.5, 5, 10),
)
LOOP_LAG_MAX = Gauge("wxrelay_loop_lag_max_seconds", "The IOLoop's longest stall since the process started.")
LOOP_LAG = Histogram(
    "wxrelay_loop_lag_seconds",
    "How late the IOLoop ran a timer (a stall blocks every request of the process).",
    # Fine around 50 ms, the most a delivery should ever wait behind the loop.
    buckets=(0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 1),
)

LAG_PROBE_MS = 100


def watch_loop_lag() -> PeriodicCallback:
    """Measure how late a periodic timer fires: the lateness is a stall."""
    expected = time.monotonic() + LAG_PROBE_MS / 1000
    worst = 0.0

    def probe() -> None:
        nonlocal expected, worst
        now = time.monotonic()
        lag = max(0.0, now - expected)
        LOOP_LAG.observe(lag)
        if lag > worst:
            worst = lag
            LOOP_LAG_MAX.set(lag)
        expected = now + LAG_PROBE_MS / 1000

    callback = PeriodicCallback(probe, LAG_PROBE_MS)
    callback.start()
    return callback
