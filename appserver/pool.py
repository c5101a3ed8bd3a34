"""The worker's pool: Celery's threads pool, whose tasks may leave their handler awaiting.

`worker_pool = "appserver.pool:TaskPool"`: Celery takes a pool class by its
path. A task that handed its message to appserver/awaiting.py has returned,
but its message is acknowledged only when the awaited handler has finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.concurrency import thread
from celery.concurrency.base import apply_target

from appserver import awaiting
from appserver.app import settings


class TaskPool(thread.TaskPool):
    def on_apply(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        **_: Any,
    ) -> thread.ApplyResult:
        future = self.executor.submit(apply_target, target, args, kwargs, _once_done(callback), accept_callback)
        return thread.ApplyResult(future)

    def on_stop(self) -> None:
        # A warm shutdown lets the awaiting handlers finish, as the threads' do; a hard one does not wait.
        awaiting.awaiting.wait_idle(settings.task_soft_time_limit + 5)
        super().on_stop()


def _once_done(callback: Callable[..., Any] | None) -> Callable[[Any], None]:
    def done(ret: Any) -> None:
        pending = awaiting.taken()
        if callback is None:
            return
        if pending is None:
            callback(ret)
        else:
            pending.then(lambda: callback(ret))

    return done
