"""WeChat's "typing…" for a user whose reply has missed the first delivery.

An account with `typing = true` (and the customer-service API) has each
handler watched from its start: if it still runs once WeChat's first delivery
has surely ended (a delivery lasts WXRELAY_WECHAT_TIMEOUT, and it began
before the handler did), the user is sent WeChat's `Typing` command, once.
Timed from the handler's start, not the delivery's (the task carries no
time of its own, and the relay stays as it is): a message that waited in a
queue shows it later than it could, never for a reply in time for the first
delivery.

WeChat's rules for it (客服输入状态): it shows for 15 s and may not be sent
again while it shows (45081), only within 30 s of the user's last message
(45080), and a message reaching the user ends it. So: at most one per user
every 15 s, across every worker (a Redis key set if absent, living 15 s).

The watch costs a quick handler a heap entry on one timer thread; the send
runs on threads of its own, so it never delays or breaks the reply, and a
failure is a WARNING naming the account, never the token.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from appserver.app import settings
from appserver.connection import client
from appserver.wechat_api import WeChatAPIError, api_for
from common.ledger import PREFIX, message_key
from wechat.messages import BaseMessage

log = logging.getLogger("wxrelay.typing")

# How long WeChat shows the indicator: one per user within it.
SHOWN_SECONDS = 15
SEND_THREADS = 2


def shown_key(account: str, openid: str) -> str:
    """Set while a user's indicator shows: the next one waits for it to go."""
    return f"{PREFIX}typing:{message_key(account, openid)}"


class Watch:
    """One message's handler: `start` when it begins, `stop` when its answer is in."""

    __slots__ = ("account", "openid", "stopped")

    def __init__(self, account: str) -> None:
        self.account = account
        self.openid = ""
        self.stopped = False

    def start(self, msg: BaseMessage) -> None:
        if msg.source:
            self.openid = msg.source
            _timer.at(time.monotonic() + settings.wechat_timeout, self._due)

    def stop(self) -> None:
        self.stopped = True

    def _due(self) -> None:
        if not self.stopped:
            _sends.submit(_send, self.account, self.openid)


def _send(account: str, openid: str) -> None:
    try:
        if client().set(shown_key(account, openid), 1, nx=True, ex=SHOWN_SECONDS):
            api_for(account).typing(openid)
    except WeChatAPIError as exc:
        log.warning("typing indicator of %s not shown: errcode %s %s", account, exc.errcode, exc.errmsg)
    except Exception as exc:  # its type only: a library's message may quote the URL, and the token in it
        log.warning("typing indicator of %s not shown: %s", account, type(exc).__name__)


class _Timer:
    """One thread running each action at its time; the actions are quick (they hand the sends on)."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def at(self, when: float, action: Callable[[], None]) -> None:
        with self._changed:
            heapq.heappush(self._due, (when, next(self._order), action))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="wxrelay-typing-timer", daemon=True)
                self._thread.start()
            elif self._due[0][2] is action:
                # Sooner than what the thread waits for (the timeout was shortened): it must wait less.
                self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._changed.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, _, action = heapq.heappop(self._due)
            action()


_timer = _Timer()
_sends = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="wxrelay-typing")
