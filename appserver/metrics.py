"""What a worker's /metrics shows (Prometheus text format): its handlers, late sends and token fetches.

The queue's depth and age are read from Redis when scraped (appserver/queue_metrics.py); where and
how a worker serves all of it: appserver/metrics_server.py.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from common.metric_child import child

# How a handler's run ended (wxrelay_handler_outcomes_total).
REPLIED, NO_REPLY, RAISED, TIMED_OUT = "replied", "no_reply", "raised", "timed_out"
OUTCOMES = (REPLIED, NO_REPLY, RAISED, TIMED_OUT)
# The handler label when no handler of the bot matched the message.
NO_HANDLER = "none"

HANDLER_SECONDS = Histogram(
    "wxrelay_handler_seconds",
    "A message's run in the worker, from its parsing to its reply rendered (an async handler's: to its "
    "coroutine's end), by account and handler (the function's name; none: no handler matched).",
    ["account", "handler"],
    # Around WeChat's window (the reply budget, 5 s) and up to the default soft time limit (60 s).
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 4.5, 5, 10, 15, 30, 60),
)
HANDLER_OUTCOMES = Counter(
    "wxrelay_handler_outcomes",
    "Handler runs by account and how they ended: replied, no_reply (returned None, or no handler matched), "
    "raised, timed_out (cancelled by the soft time limit).",
    ["account", "outcome"],
)
IN_FLIGHT = Gauge(
    "wxrelay_handlers_in_flight",
    "Handlers running now, by account: in threads, and async ones awaiting on the handlers' loop.",
    ["account"],
    # The prefork pool's children: the sum over those alive (appserver/metrics_server.py).
    multiprocess_mode="livesum",
)
LATE_SENDS = Counter(
    "wxrelay_late_sends",
    "Late replies by account, result (sent; refused by WeChat; retried later; failed for good; pickup: kept for "
    "the user's next message) and WeChat's errcode ('0' when sent, '' when none came back).",
    ["account", "result", "errcode"],
)
TOKEN_FETCHES = Counter(
    "wxrelay_token_fetches",
    "access_token requests to WeChat by account, result (ok, error) and errcode ('' when none came back).",
    ["account", "result", "errcode"],
)
TOKEN_REFRESHES = Counter(
    "wxrelay_token_refreshes",
    "Fetches that replaced a token, by account and reason: expiring (this process had the token before it "
    "expired from the cache), invalid (WeChat refused it).",
    ["account", "reason"],
)


def errcode(code: object) -> str:
    """WeChat's errcode as a label: '' when none came back."""
    return "" if code is None else str(code)


def late_send(account: str, result: str, code: int | None = None) -> None:
    """A late reply's attempt ended so (wxrelay_late_sends_total)."""
    child(LATE_SENDS, account, result, errcode(code)).inc()
