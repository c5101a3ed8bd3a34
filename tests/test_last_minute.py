"""The relay's last minute (relay/last_minute.py): what the counters gained in the last 60 snapshots."""

from __future__ import annotations

from relay.last_minute import SECONDS, LastMinute
from relay.metrics import MESSAGES, REJECTED


def test_the_last_minute_counts_what_came_since_the_snapshot_a_minute_old() -> None:
    window = LastMinute()
    window.snapshot()
    MESSAGES.labels("lm", "passive").inc(2)
    REJECTED.labels("lm", "signature").inc()
    assert window.report() == {"messages": {"passive": 2}, "rejected": {"signature": 1}}
    for _ in range(SECONDS - 1):
        window.snapshot()
    MESSAGES.labels("lm", "late").inc()
    # Still within the minute: the first snapshot is the oldest kept.
    assert window.report()["messages"] == {"passive": 2, "late": 1}
    window.snapshot()
    # A minute later the first two have left the window; the late one has not.
    assert window.report() == {"messages": {"late": 1}, "rejected": {}}
