"""The machine as the runner sees it: binaries, processes, ports (Linux /proc)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path


class ApplianceError(Exception):
    """Something the runner cannot do, said in one line the user can act on."""


def binary(name: str, package: str) -> str:
    # nginx and redis-server live in sbin or bin, not always on a user's PATH.
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise ApplianceError(f"{name} is not installed: `make run` installs it, or apt-get install {package}")
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for a parent that may never reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
    except OSError:
        return []


def words(pid: int) -> set[str]:
    """The words of a command line, also when the process rewrote it as one title (nginx, Redis)."""
    return {word for arg in argv(pid) for word in arg.split()}


def environ(pid: int) -> set[str]:
    try:
        return set(Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0"))
    except OSError:
        return set()


def cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def descendants(roots: Iterable[int]) -> set[int]:
    """The processes under `roots` (nginx's workers under its master, say)."""
    children: dict[int, list[int]] = {}
    for pid in pids():
        parent = _parent(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    pending = list(roots)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def others() -> Iterator[int]:
    """Live processes other than this one and its parent."""
    mine = {os.getpid(), os.getppid()}
    return (pid for pid in pids() if pid not in mine and alive(pid))


def terminate(targets: Iterable[int], sig: int = signal.SIGTERM) -> None:
    for pid in targets:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def port_free(port: int, host: str = "0.0.0.0") -> bool:
    """Nothing listens there: a bind succeeds, as it will for nginx, Redis or a relay."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_holder(port: int) -> str:
    """Who listens on a port, as well as /proc lets this user see."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # 0A is LISTEN; the local address ends in the port, in hex.
            if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return f"pid {pid} ({' '.join(argv(pid)).strip()[:80]})"
            except OSError:
                continue
    return "another process"


def check_port(port: int, what: str, setting: str, host: str = "0.0.0.0") -> None:
    if not port_free(port, host):
        raise ApplianceError(f"port {port} ({what}) is taken by {port_holder(port)}: stop that, or set {setting}")
