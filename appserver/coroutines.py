"""One event loop per worker process, where async handlers run.

Task threads hand coroutines to it and wait, so a process keeps many async
handlers waiting at once on a single loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
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


def run(coroutine: Coroutine[Any, Any, Any], timeout: float) -> Any:
    """Run on the shared loop; raises TimeoutError after `timeout` seconds."""
    future = asyncio.run_coroutine_threadsafe(coroutine, _background_loop())
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise
