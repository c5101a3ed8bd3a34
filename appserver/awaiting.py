"""Messages whose handler awaits: they hold a coroutine, not a pool thread.

Celery runs a task in a pool thread and acknowledges its message when the task
returns. An async handler (a language model's 10 s answer) would hold that
thread while it awaits, so a process could keep only as many conversations as
it has threads. Instead the task starts the coroutine on the process's handler
loop (appserver/coroutines.py), hands what remains to do here, and returns: the
thread takes the next message. The remainder — the reply into the ledger, then
the message's acknowledgement — runs when the coroutine ends, so a message is
acknowledged only once its handler has finished, as before, and a worker killed
meanwhile gives its awaiting messages back through the lease like any other.

A message taken from the queue counts against the worker's prefetch until it is
acknowledged. Each awaiting message therefore widens the prefetch by one (the
way Celery widens it for a task with a countdown), up to WXRELAY_ASYNC_CONCURRENCY
a process: the threads' slots stay free for the next messages, sync or async.
Beyond that, an awaiting message keeps its slot and the worker takes fewer.

Other designs measured or weighed: a thread per awaiting handler (what this
replaces: 100 conversations per appliance, a 50-thread GIL convoy per process);
one Celery pool of coroutines (gevent/eventlet: monkey-patching the ledger's
and kombu's sockets, and every sync bot must then be cooperative); acknowledging
at once and recovering from the ledger (a second recovery path beside the
lease's, for the same faults).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from celery import bootsteps

from appserver.app import app, settings

log = logging.getLogger("wxrelay.appserver")

# Storing a reply is one Redis call; a few threads keep up with thousands of
# handlers ending, and stay apart from the pool's, which sync handlers may all hold.
FINISHING_THREADS = 4

Finish = Callable[[], None]

_mine = threading.local()


class _Awaiting:
    """What this process awaits, and how far it has widened its consumer's prefetch for it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.consumer: Any = None
        self._lock = threading.Lock()
        self._count = 0
        self._widened: Counter[str] = Counter()
        self._qos: Any = None  # the consumer's QoS the widening applies to
        self._idle = threading.Condition(self._lock)
        self._finishing = ThreadPoolExecutor(FINISHING_THREADS, thread_name_prefix="wxrelay-finish")

    def follow(self, consumer: Any) -> None:
        """The consumer (re)started: its prefetch is back at the pool's size."""
        with self._lock:
            self.consumer = consumer
            self._qos = consumer.qos
            self._widened.clear()

    def hold(self, outcome: Future[Any], queue: str, finish: Finish) -> None:
        """`finish()` once `outcome` is done, and only then acknowledge the task's message."""
        with self._lock:
            self._count += 1
            qos = self._qos
            widen = qos is not None and sum(self._widened.values()) < self.limit
            if widen:
                self._widened[queue] += 1
                qos.increment_eventually()
        _mine.pending = _Pending(self, outcome, finish, queue, qos if widen else None)

    def finished(self, queue: str, qos: Any) -> None:
        with self._lock:
            self._count -= 1
            # A consumer restarted since has its own prefetch, which this message never widened.
            if qos is not None and qos is self._qos:
                self._widened[queue] -= 1
                qos.decrement_eventually()
            if not self._count:
                self._idle.notify_all()

    def widened(self) -> Counter[str]:
        """Awaiting messages, by queue, that hold no slot of the prefetch."""
        with self._lock:
            return +self._widened

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._count, timeout)

    def submit(self, work: Callable[[], None]) -> None:
        self._finishing.submit(work)


class _Pending:
    def __init__(self, owner: _Awaiting, outcome: Future[Any], finish: Finish, queue: str, qos: Any) -> None:
        self.owner, self.outcome, self.finish, self.queue, self.qos = owner, outcome, finish, queue, qos

    def then(self, acknowledge: Callable[[], None]) -> None:
        """Called by the pool in the task's thread, with what would have acknowledged the message now."""

        def done() -> None:
            try:
                self.finish()
            except Exception:
                # As for a task that raised: logged, and its message acknowledged (task_acks_late's rule).
                log.exception("finishing an awaited handler failed")
            finally:
                try:
                    acknowledge()
                finally:
                    self.owner.finished(self.queue, self.qos)

        self.outcome.add_done_callback(lambda _: self.owner.submit(done))


def hold(outcome: Future[Any], queue: str, finish: Finish) -> None:
    """From a task: its message is acknowledged once `outcome` is done and `finish()` has run."""
    awaiting.hold(outcome, queue, finish)


def taken() -> _Pending | None:
    """The hand-off the task running in this thread made, if it made one (the pool asks, once)."""
    pending = getattr(_mine, "pending", None)
    _mine.pending = None
    return pending


awaiting = _Awaiting(settings.async_concurrency)


class FollowConsumer(bootsteps.StartStopStep):
    """Tells the awaiting messages which prefetch to widen, each time the consumer starts."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, c: Any) -> None:
        awaiting.follow(c)


app.steps["consumer"].add(FollowConsumer)
