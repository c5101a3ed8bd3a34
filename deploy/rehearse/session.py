"""The frame a container rehearsal runs in: one at a time, torn down whatever happens, timed.

`make rehearse` and `make rehearse-fleet` differ in what they build and check, not in how they are run:
a lock of their own (a second run waits), a work folder under /var/tmp, SIGTERM (a CI timeout, a test
runner) tearing down as a failure does, and the table of timings printed last.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from deploy.rehearse import e2e
from deploy.rehearse.commands import RehearsalError, log
from deploy.rehearse.container import missing_requirements
from deploy.rehearse.timings import Timings


class Rehearsal(Protocol):
    keep: bool
    timings: Timings

    def rehearse(self) -> None: ...

    def teardown(self) -> None: ...

    def summary(self) -> str: ...


def main(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    title: str,
    lock: Path,
    prefix: str,
    rehearsal: Callable[[Path, bool, Path | None], Rehearsal],
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, trees) afterwards")
    args = parser.parse_args(argv)
    reason = missing_requirements()
    if reason:
        print(f"{prog}: cannot run here: {reason}", file=sys.stderr)
        return 2
    cache = os.environ.get("WXRELAY_REHEARSE_BASE_CACHE")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another {title} is running: waiting for it")
            fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
        running = rehearsal(work, args.keep, Path(cache) if cache else None)
        ok = False
        try:
            running.rehearse()
            ok = True
        except (RehearsalError, e2e.CheckFailed, subprocess.TimeoutExpired) as exc:
            print(f"\n{prog}: FAILED: {exc}", file=sys.stderr)
            running.keep = running.keep or bool(os.environ.get("WXRELAY_REHEARSE_KEEP_ON_FAILURE"))
        finally:
            running.teardown()
        total = time.monotonic() - started
        print(f"\n{title} {'passed' if ok else 'FAILED'} in {total:.0f} s:\n{running.timings.report()}")
        print(running.summary(), flush=True)
        return 0 if ok else 1
