"""The whole host restarted mid-traffic: the VPS's power cut while messages are in flight, then its boot.

A trickle of messages (deploy/rehearse/trickle.py) runs, and slow ones (the rehearsal's bot,
tests/deploy/files/rehearsal_bot.py: `slow <seconds>`) are sent so that at the cut some are held by
the relay on their first, middle and last delivery, some wait behind busy workers, some have missed
every delivery (their handler still running, or done and their late send waiting for an access token
the fake WeChat API holds back). Then every process of the container is SIGKILLed at once
(Container.crash) and the same root booted again: the services must start by themselves (systemd
units the roles enabled), with no command from here. Every message is answered exactly once, passively
or late through the fake WeChat API on this machine's bridge address, and no handler that finished
runs again (one the cut interrupted runs once more: the bot writes each run's start and end down).

Left out by design: a message whose first delivery begins in the last second before the cut. What
the host never received no host can answer; WeChat's retries save it only if the host is back in time.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from chaos.wechat import MODES, Message, WeChat
from deploy.rehearse import e2e
from deploy.rehearse.commands import RehearsalError, log, run
from deploy.rehearse.container import Container
from deploy.rehearse.trickle import WINDOW, Trickle, echo, fake_api
from simulator.api import FakeWeChatAPI

# Where tests/deploy/inventory points wxrelay_wechat_api_base: this machine's end of the veth pair.
API_PORT = 9180
# What the bot writes, inside the container's root.
RUNS = Path("var/lib/wxrelay/rehearsal-runs")
# Debian's supervisor logs there what it starts, and what exits unexpectedly.
SUPERVISOR_LOG = Path("var/log/supervisor/supervisord.log")
RATE = 4.0  # fast messages a second
CUT_AT = 18.0  # seconds after the first message
QUIET = 1.0  # no message begins this long before the cut
# (seconds after the first message, text, messages per mode). With deliveries of WINDOW = 5 s (the
# relay answers `success` 0.5 s before the last one ends) and the cut at 18 s:
SLOW = (
    (0.0, "slow 16", 1),  # every delivery over at 15 s, the reply ready at 16: its late send waits
    (0.0, "slow 20", 1),  # every delivery over, its handler still running
    (6.0, "slow 16", 1),  # on its last delivery (16–21 s)
    (11.0, "slow 12", 1),  # on its middle delivery (16–21 s)
    (16.0, "slow 8", 8),  # on its first delivery: 16 with the above on 2 × 8 worker slots, the rest queued
)
HEALTHY_WITHIN = 180.0
ANSWERED_WITHIN = 180.0


@dataclass(frozen=True)
class Figures:
    sent: int
    passive: int
    passive_after: int  # of them, on a delivery that met the host booted again
    late: int
    once: int
    lost: int
    twice: int
    wrong: int
    rerun: int  # handlers the cut interrupted, run again after the boot
    at_cut: dict[str, int]
    healthy: float  # seconds from the cut
    answered: float  # seconds from the cut to the last message answered

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.once == self.sent and not (self.lost or self.twice or self.wrong)

    def describe(self) -> str:
        states = ", ".join(f"{count} {state}" for state, count in self.at_cut.items())
        return (
            f"{self.sent} sent, {self.once} answered exactly once ({self.passive} passively, "
            f"{self.passive_after} of them after the boot, {self.late} late), "
            f"lost {self.lost}, twice {self.twice}, wrong text {self.wrong}; {self.rerun} handlers cut and run "
            f"again; healthy {self.healthy:.1f} s after the cut, last answered at {self.answered:.1f} s; "
            f"at the cut: {states}"
        )


class HostRestart:
    def __init__(self, container: Container, link: str, target: e2e.Target, api_address: str) -> None:
        self.container, self.link, self.target, self.api_address = container, link, target, api_address
        self.runs = container.rootfs / RUNS

    def rehearse(self) -> Figures:
        secrets = self.target.secrets
        api = fake_api(secrets, (self.api_address, API_PORT))
        try:
            return self._rehearse(api)
        finally:
            api.stop()

    def _rehearse(self, api: FakeWeChatAPI) -> Figures:
        s = self.target.secrets
        wechat = WeChat(
            f"{self.target.url}/wechat",
            s["vault_wxrelay_wechat_token"],
            s["vault_wxrelay_wechat_appid"],
            s["vault_wxrelay_wechat_aes_key"],
            WINDOW,
        )
        trickle = Trickle(wechat, api, RATE, "restart")
        # No token until after the cut: the first late sends wait for one, in flight.
        api.hold_tokens()
        started = time.monotonic()
        trickle.start()
        for at, text, per_mode in SLOW:
            pause_until(started + at)
            trickle.messages.extend(wechat.send(text, mode) for mode in MODES for _ in range(per_mode))
        pause_until(started + CUT_AT - QUIET)
        trickle.stop()
        pause_until(started + CUT_AT)
        # A VM without power sends nothing: the resets of the killed sockets must not leave either (this
        # machine's end of the veth pair is down while they die). WeChat's open deliveries run to their
        # deadline, and its next ones meet the host booted again, as they would meet a VM back from a reset.
        run(["ip", "link", "set", self.link, "down"])
        cut = time.monotonic()
        try:
            self.container.crash()
        finally:
            run(["ip", "link", "set", self.link, "up"])
        log(f"{self.container.machine}: every process SIGKILLed at once (cgroup.kill), {len(trickle.messages)} sent")
        before = self.read_runs()
        supervisor_log = self.container.rootfs / SUPERVISOR_LOG
        logged = supervisor_log.stat().st_size
        api.release_tokens()
        self.container.boot()
        log(f"{self.container.machine} booted again: ssh answers {time.monotonic() - cut:.1f} s after the cut")
        healthy = self.wait_healthy() - cut
        log(f"healthy (nginx, relays, 2 workers seen) {healthy:.1f} s after the cut, no command sent")
        answered = self.wait_answered(trickle) - cut
        # Every run begun since the boot has ended: a handler run twice would show by now.
        e2e.wait_for(
            lambda: self.read_runs()[len(before) :],
            lambda runs: runs.count("start ") == runs.count("done "),
            ANSWERED_WITHIN,
        )
        e2e.check_processes(self.target)
        with open(supervisor_log, errors="replace") as log_file:
            log_file.seek(logged)
            since = log_file.read()
        failed = [line for line in since.splitlines() if "not expected" in line or "gave up" in line]
        if failed or "spawned:" not in since:
            raise RehearsalError("at boot, supervisor's programs did not start cleanly:\n" + since[-3000:])
        e2e.passed(f"at boot, supervisor started every program once: {since.count('spawned:')} spawned, none failed")
        figures = self.figures(trickle, api, cut, before, healthy, answered)
        missing = [state for state, count in figures.at_cut.items() if not count and state != "answered"]
        if missing:
            raise RehearsalError(f"the cut found no message {', '.join(missing)}: {figures.describe()}")
        return figures

    def read_runs(self) -> str:
        return self.runs.read_text() if self.runs.exists() else ""

    def wait_healthy(self) -> float:
        """When nginx answers /healthz and the first relay sees every worker, read without changing anything."""

        def healthy() -> bool:
            try:
                if httpx.get(f"{self.target.url}/healthz", timeout=2).status_code != 200:
                    return False
                health = e2e.relay_health(self.target)
            except (httpx.HTTPError, ValueError, RehearsalError, subprocess.TimeoutExpired):
                return False
            return health.get("status") == "ok" and health.get("workers") == self.target.workers

        if not e2e.wait_for(healthy, bool, HEALTHY_WITHIN, interval=0.25):
            raise RehearsalError(f"not healthy within {HEALTHY_WITHIN:.0f} s of the boot")
        return time.monotonic()

    def wait_answered(self, trickle: Trickle) -> float:
        """When the last message got its answer (polled every 0.2 s)."""
        deadline, last = time.monotonic() + ANSWERED_WITHIN, time.monotonic()
        pending = list(trickle.messages)
        while pending and time.monotonic() < deadline:
            still = [m for m in pending if not trickle.answered(m)]
            if len(still) < len(pending):
                last = time.monotonic()
            pending = still
            time.sleep(0.2)
        for message in trickle.messages:
            message.finished.wait(max(0.0, deadline - time.monotonic()))
        return last

    def figures(
        self, trickle: Trickle, api: FakeWeChatAPI, cut: float, before: str, healthy: float, answered: float
    ) -> Figures:
        after = self.read_runs()[len(before) :]
        passive = passive_after = late = once = lost = twice = wrong = rerun = 0
        at_cut: dict[str, int] = dict.fromkeys(
            ("answered", "on delivery 1", "on delivery 2", "on delivery 3", "queued", "running late", "sending late"),
            0,
        )
        for message in trickle.messages:
            sends = api.sends_to(message.user)
            answers = int(message.passive is not None) + len(sends)
            passive += message.passive is not None
            passive_after += message.passive_at is not None and message.passive_at > cut
            late += len(sends)
            lost += answers == 0
            texts = ([message.passive] if message.passive is not None else []) + [
                send.get("text", {}).get("content") for send in sends
            ]
            bad = any(text != echo(message.user, message.text) for text in texts) or message.error is not None
            wrong += bad
            done = before.count(f"done {message.key}\n") + after.count(f"done {message.key}\n")
            began_before = before.count(f"start {message.key}\n")
            began_after = after.count(f"start {message.key}\n")
            cut_short = began_before > before.count(f"done {message.key}\n")
            rerun += cut_short and began_after > 0
            ran_twice = done > 1 or began_before + began_after > 1 + cut_short
            twice += answers > 1 or ran_twice
            once += answers == 1 and not bad and not ran_twice
            at_cut[state_at(message, cut, before)] += 1
        return Figures(
            len(trickle.messages),
            passive,
            passive_after,
            late,
            once,
            lost,
            twice,
            wrong,
            rerun,
            at_cut,
            healthy,
            answered,
        )


def state_at(message: Message, cut: float, runs: str) -> str:
    """Where a message stood when the power went."""
    if message.passive_at is not None and message.passive_at <= cut:
        return "answered"
    begun = [d for d in message.deliveries if d.started <= cut]
    if len(begun) < len(message.deliveries) or any(d.started + d.seconds > cut for d in begun):
        # A delivery was open at the cut: the one it was on.
        if f"start {message.key}\n" not in runs:
            return "queued"
        return f"on delivery {len(begun)}"
    if f"start {message.key}\n" not in runs:
        return "queued"
    return "sending late" if f"done {message.key}\n" in runs else "running late"


def pause_until(moment: float) -> None:
    """A point in the traffic's timeline (not a synchronisation: the messages run on meanwhile)."""
    time.sleep(max(0.0, moment - time.monotonic()))
