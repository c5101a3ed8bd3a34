"""The operator's side of a rehearsal: the project as it was when the rehearsal began, and
`make deploy` (or another make target) run from this machine against an inventory, as a user runs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from deploy.rehearse.commands import RehearsalError

ROOT = Path(__file__).resolve().parents[2]
VAULT_PASSWORD = ROOT / "tests/deploy/vault-password"
MAKE_WITHIN = 900


def snapshot_project(target: Path) -> None:
    """The code deployed, copied once: edits made meanwhile do not change it."""
    ignore = shutil.ignore_patterns(
        ".git",
        ".venv",
        "build",
        ".state",
        "__pycache__",
        "*.pyc",
        ".pytest_cache",
        ".hypothesis",
        ".ruff_cache",
        ".vagrant",
        "*.egg-info",
    )
    shutil.copytree(ROOT, target, ignore=ignore, symlinks=True)


class Operator:
    """Runs make targets with the rehearsal's inventory, its ssh key and its project snapshot;
    each run's output is kept as WORK/NAME.log (and copied to the temporary folder, for a failed CI run)."""

    def __init__(self, work: Path, inventory: Path, key: Path, snapshot: Path, prefix: str) -> None:
        self.work, self.inventory, self.key, self.snapshot, self.prefix = work, inventory, key, snapshot, prefix

    def deploy(self, name: str, extra: str = "") -> str:
        returncode, output = self.make("deploy", name, extra)
        if returncode != 0:
            raise RehearsalError(f"{name} failed ({returncode}); its output:\n{output[-6000:]}")
        return output

    def make(self, target: str, name: str, extra: str = "") -> tuple[int, str]:
        argv = [
            "make",
            "--no-print-directory",
            "-C",
            str(ROOT),
            target,
            f"VENV={sys.prefix}",
            f"INVENTORY={self.inventory}",
            f"VAULT_PASSWORD_FILE={VAULT_PASSWORD}",
            # --diff as an operator upgrading would run it: the secrets must not show.
            f"ANSIBLE_ARGS=--diff -e app_project_dir={self.snapshot} {extra}".rstrip(),
        ]
        env = {**os.environ, "WXRELAY_REHEARSE_SSH_KEY": str(self.key), "ANSIBLE_FORCE_COLOR": "0"}
        output_path = self.work / f"{name}.log"
        with open(output_path, "w") as out:
            # A session of its own: on a failure or a signal, make and
            # ansible-playbook stop together, before the teardown.
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                returncode = process.wait(timeout=MAKE_WITHIN)
            except BaseException:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                raise
        output = output_path.read_text()
        shutil.copyfile(output_path, Path(tempfile.gettempdir()) / f"{self.prefix}-{name}.log")
        return returncode, output
