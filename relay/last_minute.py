"""The relay's last minute, for `make status`: its deliveries by outcome and its rejections by reason.

Read from the Prometheus counters, never counted on the way of a message: a snapshot of the totals each
second, and the last minute is the totals now less the snapshot a minute old.
"""

from __future__ import annotations

from collections import Counter, deque

from prometheus_client.metrics import MetricWrapperBase
from tornado.ioloop import PeriodicCallback

from relay.metrics import MESSAGES, REJECTED

SECONDS = 60


def _totals(metric: MetricWrapperBase, label: str) -> Counter[str]:
    """A labelled counter's totals by one label, every account together."""
    found: Counter[str] = Counter()
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                found[sample.labels[label]] += int(sample.value)
    return found


class LastMinute:
    def __init__(self) -> None:
        self._snapshots: deque[tuple[Counter[str], Counter[str]]] = deque(maxlen=SECONDS)
        self._timer = PeriodicCallback(self.snapshot, 1000)

    def start(self) -> None:
        self.snapshot()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def snapshot(self) -> None:
        self._snapshots.append((_totals(MESSAGES, "outcome"), _totals(REJECTED, "reason")))

    def report(self) -> dict[str, dict[str, int]]:
        """Deliveries by outcome and rejections by reason since the oldest snapshot (a minute ago, once it has
        run a minute)."""
        if not self._snapshots:
            return {"messages": {}, "rejected": {}}
        messages, rejected = _totals(MESSAGES, "outcome"), _totals(REJECTED, "reason")
        old_messages, old_rejected = self._snapshots[0]
        return {"messages": dict(+(messages - old_messages)), "rejected": dict(+(rejected - old_rejected))}
