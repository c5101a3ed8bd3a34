"""A rehearsal and what it yields: the stage every scenario plays on, and a
scenario's result — a tally per message, the recovery time, and what else went wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chaos.appliance import Appliance, wait_until
from chaos.settle import settle
from chaos.tally import LateSends, Tally, read_runs, tally
from chaos.wechat import Message, WeChat
from common import ledger
from simulator.api import FakeWeChatAPI

# What the contract promises after a worker dies: the reply within 30 s (a lease and a sweep).
RECOVERY_LIMIT = 30.0
STARTED_TIMEOUT = 30.0
OUTAGE = 60.0


@dataclass
class Rehearsal:
    """What every scenario works with: the appliance, WeChat in front of it, WeChat's API behind it."""

    appliance: Appliance
    api: FakeWeChatAPI
    wechat: WeChat
    late: LateSends
    outage: float = OUTAGE

    @property
    def window(self) -> float:
        return self.appliance.window

    @property
    def budget(self) -> float:
        return self.appliance.budget

    @staticmethod
    def slow(seconds: float) -> str:
        return f"slow {seconds:.2f}"

    def runs(self) -> dict[str, list[int]]:
        return read_runs(self.appliance.runs_file)

    def wait_started(self, messages: list[Message], timeout: float = STARTED_TIMEOUT) -> dict[str, int]:
        """Wait until every message's handler has begun; returns the PID of the worker running each."""

        def started() -> dict[str, int]:
            runs = self.runs()
            return {m.key: runs[m.key][0] for m in messages} if all(runs.get(m.key) for m in messages) else {}

        return wait_until(started, timeout, f"{len(messages)} handlers to start")

    def deliveries(self, message: Message) -> int:
        """Deliveries of the message the ledger has counted."""
        return int(self.appliance.redis().hget(ledger.record_key(message.key), "deliveries") or 0)


@dataclass
class Result:
    """One scenario's outcome: a tally per message, the recovery time, and what went wrong besides."""

    name: str
    tallies: list[Tally]
    recovery: float | None = None  # None: no message was hit; inf: one never recovered
    recovery_limit: float | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(t.lost for t in self.tallies)

    @property
    def twice(self) -> int:
        return sum(t.twice for t in self.tallies)

    @property
    def failures(self) -> list[str]:
        """Every broken promise, in words; empty when the scenario passed."""
        found = [f"{t.describe()}" for t in self.tallies if not t.ok]
        if self.recovery_limit is not None and (self.recovery is None or self.recovery >= self.recovery_limit):
            shown = "never" if self.recovery in (None, float("inf")) else f"{self.recovery:.1f} s"
            found.append(f"recovery {shown}, the contract says under {self.recovery_limit:.0f} s")
        return found + self.problems

    @property
    def ok(self) -> bool:
        return not self.failures


def finish(
    r: Rehearsal,
    name: str,
    messages: list[Message],
    *,
    max_runs: dict[str, int] | None = None,
    recovery_limit: float | None = None,
    problems: list[str] | None = None,
    notes: list[str] | None = None,
) -> Result:
    """Wait for the end, then count. The recovery: the longest from a fault to the reply, over the messages
    it hit (`Message.struck_at`)."""
    problems = list(problems or [])
    left = settle(r.appliance, r.api, messages)
    if left:
        problems.append(f"not settled after the deadline: {', '.join(left)}")
    runs = r.runs()
    tallies = [tally(m, r.api, r.late, runs, (max_runs or {}).get(m.key, 1)) for m in messages]
    struck = [t for t in tallies if t.struck_at is not None]
    recovery = max((t.recovery for t in struck if t.recovery is not None), default=None)
    if any(t.recovery is None for t in struck):
        recovery = float("inf")  # one never recovered
    return Result(name, tallies, recovery, recovery_limit, problems, list(notes or []))


def strike(messages: list[Message], at: float) -> list[Message]:
    """Mark the messages a fault hit at `at`: their recovery is timed from then."""
    for message in messages:
        message.struck_at = at
    return messages
