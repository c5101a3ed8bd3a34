"""A steady trickle of messages through the appliance while something happens to it, and how each fared.

Each message comes from a user of its own, delivered as WeChat does (chaos/wechat.py: a 5 s deadline,
three deliveries); its answers are its passive reply and the customer-service sends to its user that
the fake WeChat API (simulator/api.py) recorded. Answered exactly once: one of the two, never both,
never neither, and the text the echo bot (appserver/example_bot.py) gives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from chaos.wechat import MODES, Message, WeChat
from simulator.api import FakeWeChatAPI

WINDOW = 5.0
# Three deliveries of WINDOW each, then the late reply's own retries.
SETTLE_WITHIN = 90.0


def echo(user: str, text: str) -> str:
    """What the example bot answers."""
    return f"Hi {user}, you said: {text}"


@dataclass(frozen=True)
class Counts:
    messages: int
    passive: int
    late: int
    lost: int
    twice: int
    wrong: int
    deliveries: int
    # Early deliveries a relay holds past WeChat's deadline while the reply is not ready (relay/dispatch.py):
    # WeChat delivers again; only the last delivery must be answered in time.
    held: int
    errors: int  # deliveries answered with an HTTP error, and messages none of whose deliveries was answered

    @property
    def ok(self) -> bool:
        return self.messages > 0 and not (self.lost or self.twice or self.wrong or self.errors)

    def describe(self) -> str:
        return (
            f"{self.messages} messages: {self.passive} answered passively + {self.late} by customer-service send; "
            f"lost {self.lost}, answered twice {self.twice}, wrong text {self.wrong}; {self.deliveries} deliveries, "
            f"{self.held} early ones held past 5 s, {self.errors} errors"
        )


def fake_api(secrets: dict[str, str], address: tuple[str, int]) -> FakeWeChatAPI:
    """The fake WeChat API on `address`, started, knowing the test vault's accounts that send late replies
    (tests/deploy/inventory/group_vars/all/vault.yml): the default account, shop, and the WeCom app staff."""
    api = FakeWeChatAPI(
        appid=secrets["vault_wxrelay_wechat_appid"], secret=secrets["vault_wxrelay_wechat_appsecret"], address=address
    )
    api.add_official(secrets["vault_wxrelay_shop_appid"], secrets["vault_wxrelay_shop_appsecret"])
    api.add_wecom_app(secrets["vault_wxrelay_staff_corpid"], secrets["vault_wxrelay_staff_secret"], 1000002)
    api.start()
    return api


class Trickle:
    def __init__(self, wechat: WeChat, api: FakeWeChatAPI, rate: float, label: str) -> None:
        self.wechat, self.api, self.rate, self.label = wechat, api, rate, label
        self.messages: list[Message] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._send, name=f"trickle-{self.label}", daemon=True)
        self._thread.start()

    def _send(self) -> None:
        started, number = time.monotonic(), 0
        while not self._stop.is_set():
            mode = MODES[number % len(MODES)]
            self.messages.append(self.wechat.send(f"{self.label} {number}", mode))
            number += 1
            # Paced against the start, not the last send: the rate holds however long a send takes to start.
            self._stop.wait(max(0.0, started + number / self.rate - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def answered(self, message: Message) -> bool:
        return message.passive is not None or bool(self.api.sends_to(message.user))

    def settle(self, within: float = SETTLE_WITHIN) -> None:
        """Until every message has had its deliveries and an answer (passive, or late), or the deadline passes."""
        deadline = time.monotonic() + within
        for message in self.messages:
            message.finished.wait(max(0.0, deadline - time.monotonic()))
        pending: Callable[[], list[Message]] = lambda: [m for m in self.messages if not self.answered(m)]  # noqa: E731
        while pending() and time.monotonic() < deadline:
            time.sleep(0.5)

    def counts(self) -> Counts:
        passive = late = lost = twice = wrong = deliveries = held = errors = 0
        for message in self.messages:
            sends = self.api.sends_to(message.user)
            answers = int(message.passive is not None) + len(sends)
            passive += message.passive is not None
            late += len(sends)
            lost += answers == 0
            twice += answers > 1
            expected = echo(message.user, message.text)
            texts = [message.passive] if message.passive is not None else []
            texts += [send.get("text", {}).get("content") for send in sends]
            wrong += any(text != expected for text in texts) or message.error is not None
            deliveries += len(message.deliveries)
            held += sum(1 for d in message.deliveries if d.outcome == "timeout")
            errors += sum(1 for d in message.deliveries if d.error)
            errors += message.answered_on is None
        return Counts(len(self.messages), passive, late, lost, twice, wrong, deliveries, held, errors)
