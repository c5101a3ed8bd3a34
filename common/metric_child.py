"""A labelled Prometheus metric's child, looked up once (relays and workers alike)."""

from __future__ import annotations

from functools import cache
from typing import Any

from prometheus_client.metrics import MetricWrapperBase


@cache
def child(metric: MetricWrapperBase, *labels: str) -> Any:
    """`metric.labels(*labels)`, kept: labels() takes a lock and checks its arguments every time, and
    the label values (accounts, outcomes, reasons, handlers, errcodes) are few."""
    return metric.labels(*labels)
