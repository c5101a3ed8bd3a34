"""One event loop per worker process, where async handlers run.

A task hands its handler's coroutine to it and goes back to the pool: the
coroutine costs no thread while it awaits (appserver/awaiting.py), so a
process keeps as many handlers waiting as it has coroutines, on one thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="wxrelay-handlers", daemon=True).start()
        return _loop


class TimedOut(TimeoutError):
    """The coroutine ran past its time limit and was cancelled: told apart from a TimeoutError of its own."""


async def _within(coroutine: Coroutine[Any, Any, Any], timeout: float) -> Any:
    # Cancelled on the loop itself, so the handler's `finally` and `async with` run before it ends.
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            return await coroutine
    except TimeoutError as exc:
        if limit.expired():
            # Chained: the traceback still shows where the handler was waiting.
            raise TimedOut(f"cancelled after {timeout:g} s") from exc
        raise


def start(coroutine: Coroutine[Any, Any, Any], timeout: float) -> Future[Any]:
    """Run on the shared loop; the future fails with TimedOut (a TimeoutError) once it has run `timeout` seconds."""
    return asyncio.run_coroutine_threadsafe(_within(coroutine, timeout), _background_loop())


def run(coroutine: Coroutine[Any, Any, Any], timeout: float) -> Any:
    """Run on the shared loop and wait for it here (a thread): what code outside a task uses."""
    return start(coroutine, timeout).result()
