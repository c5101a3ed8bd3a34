"""Running this machine's commands for the rehearsals: a failure raises with the command's output."""

from __future__ import annotations

import subprocess
import time


class RehearsalError(Exception):
    pass


def log(message: str) -> None:
    print(f"[rehearse {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(argv: list[str], *, check: bool = True, timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, text=True, capture_output=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise RehearsalError(
            f"{' '.join(map(str, argv))} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result
