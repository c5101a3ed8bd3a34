"""Periodic chores of a worker process, each on a thread of its own from the
moment the worker is ready until it shuts down."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from celery.signals import worker_ready, worker_shutdown

log = logging.getLogger("wxrelay.background")
_stop = threading.Event()


Chore = Callable[[str], object]


def every(interval: float, name: str, chore: Chore, last: Chore | None = None) -> None:
    """Run `chore(hostname)` every `interval` seconds in each worker; `last(hostname)` once at shutdown.

    A failing chore is logged and tried again next time: a Redis outage must not end it."""

    def loop(hostname: str) -> None:
        while not _stop.is_set():
            try:
                chore(hostname)
            except Exception as exc:  # noqa: BLE001 — the chore's own errors, logged; the thread lives on
                log.warning("%s failed: %s", name, exc)
            _stop.wait(interval)
        if last is not None:
            try:
                last(hostname)
            except Exception as exc:  # noqa: BLE001
                log.warning("%s at shutdown failed: %s", name, exc)

    def start(sender: object, **_: object) -> None:
        hostname = getattr(sender, "hostname", "worker")
        threading.Thread(target=loop, args=(hostname,), name=f"wxrelay-{name}", daemon=True).start()

    worker_ready.connect(start, weak=False)


@worker_shutdown.connect
def _shutdown(**_: object) -> None:
    _stop.set()
