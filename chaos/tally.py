"""Counting, per message: its passive replies, its customer-service sends, its handler's runs.

A message is answered exactly once when one delivery carried a real reply
(not `success`) or one customer-service send reached its user — never both,
never neither. Each message comes from a user of its own, so the sends to
that user are the sends of that message.
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from chaos.wechat import Message
from simulator.api import FakeWeChatAPI

_SLOW = re.compile(r"^slow (\d+(?:\.\d+)?)$")


def expected_reply(text: str) -> str:
    """What chaos/bot.py answers to `text`."""
    return f"slow reply to {text}" if _SLOW.match(text) else f"echo: {text}"


def read_runs(path: Path) -> dict[str, list[int]]:
    """Every handler run in the runs file: dedupe key → the PIDs of the workers that ran it, in order."""
    runs: dict[str, list[int]] = defaultdict(list)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return runs
    for line in text.splitlines():
        key, _, pid = line.partition(" ")
        if key:
            runs[key].append(int(pid) if pid.isdigit() else 0)
    return runs


class LateSends:
    """When each customer-service send reached the fake WeChat API: a thread woken by every send."""

    def __init__(self, api: FakeWeChatAPI) -> None:
        self._api = api
        self._first: dict[str, float] = {}
        self._seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="chaos-late-sends", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._api.wait_for(lambda api: len(api.messages) > self._seen, timeout=0.5)
            except TimeoutError:
                continue
            now = time.monotonic()
            messages = self._api.messages
            for message in messages[self._seen :]:
                self._first.setdefault(str(message.get("touser", "")), now)
            self._seen = len(messages)

    def first_at(self, user: str) -> float | None:
        return self._first.get(user)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class Tally:
    """How one message was answered."""

    key: str
    user: str
    mode: str
    text: str
    passive: int
    late: int
    runs: int
    max_runs: int
    answered_at: float | None
    struck_at: float | None
    wrong: tuple[str, ...]  # replies that are not the bot's answer, replies WeChat could not read

    @property
    def answers(self) -> int:
        return self.passive + self.late

    @property
    def exactly_once(self) -> bool:
        return self.answers == 1

    @property
    def lost(self) -> bool:
        return self.answers == 0

    @property
    def twice(self) -> bool:
        return self.answers > 1

    @property
    def recovery(self) -> float | None:
        """From the fault that hit it to its reply reaching the user; None if no fault hit it, or no reply came."""
        if self.struck_at is None or self.answered_at is None:
            return None
        return max(0.0, self.answered_at - self.struck_at)

    @property
    def runs_ok(self) -> bool:
        return 1 <= self.runs <= self.max_runs

    @property
    def ok(self) -> bool:
        return self.exactly_once and self.runs_ok and not self.wrong

    def describe(self) -> str:
        how = f"{self.passive} passive + {self.late} late"
        runs = f"{self.runs} runs (at most {self.max_runs})"
        wrong = f"; {'; '.join(self.wrong)}" if self.wrong else ""
        return f"{self.key} ({self.mode}, {self.text!r}, {self.user}): {how}, {runs}{wrong}"


def tally(
    message: Message, api: FakeWeChatAPI, late_sends: LateSends, runs: dict[str, list[int]], max_runs: int = 1
) -> Tally:
    expected = expected_reply(message.text)
    sends = api.sends_to(message.user)
    wrong = [] if message.passive in (None, expected) else [f"passive reply {message.passive!r}"]
    wrong += [
        f"late reply {send.get('text', send)!r}" for send in sends if send.get("text", {}).get("content") != expected
    ]
    if message.error:
        wrong.append(message.error)
    times = [t for t in (message.passive_at, late_sends.first_at(message.user)) if t is not None]
    return Tally(
        key=message.key,
        user=message.user,
        mode=message.mode,
        text=message.text,
        passive=int(message.passive is not None),
        late=len(sends),
        runs=len(runs.get(message.key, [])),
        max_runs=max_runs,
        answered_at=min(times) if times else None,
        struck_at=message.struck_at,
        wrong=tuple(wrong),
    )
