"""How long each step of a rehearsal took, for its closing table."""

from __future__ import annotations

import time

from deploy.rehearse.commands import log


class Timings:
    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []

    def step(self, name: str) -> _Step:
        return _Step(self, name)

    def add(self, name: str, seconds: float) -> None:
        """A duration measured inside a step (from a fault to a recovery)."""
        self.steps.append((name, seconds))

    def report(self) -> str:
        return "\n".join(f"  {name:<40} {seconds:7.1f} s" for name, seconds in self.steps)


class _Step:
    def __init__(self, timings: Timings, name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        log(f"{self.name} …")
        self.started = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        seconds = time.monotonic() - self.started
        self.timings.steps.append((self.name, seconds))
        log(f"{self.name}: {seconds:.1f} s{' (failed)' if exc[0] else ''}")
