"""WeChat, as the rehearsal plays it: each message from a user of its own, sent
from a thread of its own, delivery by delivery, so a scenario can see which
delivery a message is on and strike then.

Each delivery is one `WeChatSimulator.deliver` of the same signed request (a
simulator of one delivery), so a message is delivered exactly as the
simulator's own retry loop would — up to three times, each cut at WeChat's
deadline — except that a WeChat which does not retry an HTTP error (a 502
from nginx when a relay dies) can be played too: `retry_errors=False`; and a
delivery that fails at once (no connection) is retried either at once or, as
WeChat's deliveries come about one window apart, when its window has passed:
`paced=True`.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from simulator import WeChatSimulator
from simulator.client import Outcome
from simulator.messages import new_msg_id, text_message

MODES = ("plain", "safe")
DELIVERIES = 3


@dataclass(frozen=True)
class Delivery:
    """One POST of a message: its HTTP status (or timeout / unreachable), when it began, how long it took."""

    outcome: Outcome
    started: float
    seconds: float

    @property
    def ok(self) -> bool:
        return self.outcome == 200

    @property
    def error(self) -> bool:
        """An answer WeChat counts as a failure of the server: an HTTP status other than 200, or no connection."""
        return self.outcome != 200 and self.outcome != "timeout"


@dataclass
class Message:
    """One message WeChat sends, and how it fared."""

    key: str  # the ledger's dedupe key
    user: str
    mode: str
    text: str
    retry_errors: bool
    paced: bool = False
    sent_at: float = field(default_factory=time.monotonic)
    deliveries: list[Delivery] = field(default_factory=list)
    passive: str | None = None  # the text of a passive reply (not `success`)
    passive_at: float | None = None
    error: str | None = None  # a reply WeChat could not read, or a crash of the sender
    struck_at: float | None = None  # when a fault hit it: its recovery is timed from then
    delivering: list[threading.Event] = field(default_factory=lambda: [threading.Event() for _ in range(DELIVERIES)])
    finished: threading.Event = field(default_factory=threading.Event)

    def on_delivery(self, number: int) -> bool:
        """Delivery `number` (1-based) has begun."""
        return self.delivering[number - 1].is_set()

    @property
    def answered_on(self) -> int | None:
        """The delivery WeChat got HTTP 200 on."""
        return next((n for n, d in enumerate(self.deliveries, start=1) if d.ok), None)


class WeChat:
    """Sends messages to the appliance's callback URL as WeChat does, in plaintext or safe mode."""

    def __init__(self, url: str, token: str, appid: str, aes_key: str, window: float) -> None:
        self.window = window
        self._simulators = {
            mode: WeChatSimulator(url, token, appid, aes_key, mode=mode, deadline=window, deliveries=1)
            for mode in MODES
        }
        self._numbers = itertools.count(1)
        self._run = secrets.token_hex(3)

    def send(self, text: str, mode: str, retry_errors: bool = True, paced: bool = False) -> Message:
        """Start delivering one message from a new user; returns at once."""
        msg_id = new_msg_id()
        user = f"o_chaos_{self._run}_{next(self._numbers):04d}"
        message = Message(f"msg:{msg_id}", user, mode, text, retry_errors, paced)
        fields = text_message(text, user=user, msg_id=msg_id)
        threading.Thread(target=self._deliver, args=(message, fields), name=f"wechat-{user}", daemon=True).start()
        return message

    def send_mix(self, texts: Iterable[str], retry_errors: bool = True, paced: bool = False) -> list[Message]:
        """Each text once in every mode."""
        return [self.send(text, mode, retry_errors, paced) for text in texts for mode in MODES]

    def _deliver(self, message: Message, fields: dict[str, object]) -> None:
        simulator = self._simulators[message.mode]
        try:
            params, body = simulator.build_request(fields)  # type: ignore[arg-type]
            for number in range(1, DELIVERIES + 1):
                message.delivering[number - 1].set()
                started = time.monotonic()
                result = simulator.deliver(params, body)
                attempt = result.attempts[0]
                message.deliveries.append(Delivery(attempt.outcome, started, attempt.seconds))
                if result.answered:
                    if result.reply is not None:
                        message.passive = result.text if result.text is not None else str(result.reply)
                        message.passive_at = time.monotonic()
                    return
                if attempt.outcome != "timeout" and not message.retry_errors:
                    return
                if message.paced and number < DELIVERIES:
                    time.sleep(max(0.0, started + self.window - time.monotonic()))  # WeChat's pace, not waiting
        except Exception as exc:  # a reply WeChat would reject: recorded, counted as a failure
            message.error = f"{type(exc).__name__}: {exc}"
        finally:
            message.finished.set()


def wait_finished(messages: Iterable[Message], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    return all(message.finished.wait(max(0.0, deadline - time.monotonic())) for message in messages)
