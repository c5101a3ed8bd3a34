"""Real processes for the tests: each started on a free loopback port and
stopped by its PID. Nothing here touches a service the test did not start."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from chaos.appliance import metric
from common.worker_number import worker_number

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> object:
    """Poll a condition until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # a service that is still starting refuses connections
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def require(binary: str, package: str | None = None) -> str:
    """The binary's path; `package` is the Debian package it comes in, when not of the same name."""
    path = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.path.exists(p)), None
    )
    if path is None:
        raise RuntimeError(
            f"{binary} is not installed: run .ci/run or install it (apt-get install {package or binary})"
        )
    return path


def require_appliance() -> None:
    """What `python -m appliance run` needs: the binaries, and this test run in the project's virtualenv."""
    for binary in ("redis-server", "nginx", "supervisord"):
        require(binary)
    if not (Path(sys.prefix) / "bin" / "celery").exists():
        raise RuntimeError(f"run the tests in the project's virtualenv (make test), not {sys.executable}")


class Process:
    """A child process with its output in a log file, stopped by PID."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, condition: Callable[[], object], timeout: float = 30) -> None:
        try:
            wait_until(lambda: self._check_alive() and condition(), timeout, f"{self.name} to be ready")
        except TimeoutError as exc:
            # Never ready, never returned to the test: stopped here, or nobody would stop it.
            self.stop(signal.SIGKILL)
            raise TimeoutError(f"{exc}\n--- {self.name} log ---\n{self.log()[-4000:]}") from None

    def _check_alive(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()[-4000:]}")
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.alive():
            # The whole process group: a Celery worker's pool goes with it.
            os.killpg(self.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self._log.close()


def app_acl() -> list[str]:
    """The rules of the appliance's Redis user, as deploy/redis/redis.conf.j2 grants them."""
    template = (ROOT / "deploy/redis/redis.conf.j2").read_text()
    rules = re.search(r"^user \{\{ wxrelay_redis_user \}\} on #\{\{ \w+ \}\} (.+)$", template, re.M)
    assert rules is not None, "redis.conf.j2 has no line for the appliance's user"
    return rules.group(1).replace("{{ wxrelay_redis_channel_rules }}", "&*").split()


def app_user(password: str) -> list[str]:
    """redis-server's arguments for the appliance's user, signing in with `password`."""
    return ["--user", "wxrelay", "on", f">{password}", *app_acl()]


class RedisServer(Process):
    """Relays and workers sign in as the appliance's user, with the rights a
    server gives it; the tests' own client is the default user, with every right."""

    def __init__(self, log_dir: Path, password: str = "testpass") -> None:
        self.port = free_port()
        self.password = password
        self.url = f"redis://wxrelay:{password}@127.0.0.1:{self.port}/0"
        self.admin_url = f"redis://:{password}@127.0.0.1:{self.port}/0"
        argv = [
            require("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
            "--requirepass", password, *app_user(password),
            "--save", "", "--appendonly", "no",
            "--dir", str(log_dir), "--maxmemory-policy", "noeviction", "--enable-debug-command", "local",
        ]  # fmt: skip
        super().__init__(f"redis-{self.port}", argv, log_dir)
        self.wait_ready(lambda: self.client().ping())

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis.from_url(self.admin_url, **kwargs)  # type: ignore[arg-type]


class Worker(Process):
    """A Celery worker of the appserver, serving /metrics on `metrics_port` (0: on none, so that the
    workers of a test run never take one another's port, nor a port of the machine's own appliance)."""

    def __init__(
        self, log_dir: Path, env: dict[str, str], name: str, redis_server: RedisServer, metrics_port: int = 0
    ) -> None:
        argv = [
            sys.executable, "-m", "celery", "-A", "appserver", "worker", "--loglevel", "INFO",
            "-n", f"{name}@%h", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        self.metrics_port = metrics_port
        # Worker n serves on WXRELAY_WORKER_METRICS_PORT + n.
        first = metrics_port - (worker_number(f"{name}@") or 0) if metrics_port else 0
        super().__init__(name, argv, log_dir, {**env, "WXRELAY_WORKER_METRICS_PORT": str(first)})
        hostname = f"{name}@{socket.gethostname()}"
        self.wait_ready(lambda: redis_server.client().zscore("wxrelay:workers", hostname) is not None)

    def metrics(self) -> str:
        """What its /metrics answers now (Prometheus text)."""
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5, trust_env=False).text

    def metric(self, name: str, **labels: str) -> float:
        """The worker's /metrics samples of `name` with these labels, summed (0 when none)."""
        return metric(self.metrics(), name, **labels)


class RelayProcess(Process):
    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(f"relay-{self.port}", [sys.executable, "-m", "relay", "--port", str(self.port)], log_dir, env)
        self.wait_ready(lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200)

    @property
    def callback(self) -> str:
        return f"{self.url}/wechat"

    def metric(self, name: str, **labels: str) -> float:
        """The relay's /metrics samples of `name` with these labels, summed (0 when none)."""
        return metric(httpx.get(f"{self.url}/metrics", timeout=5).text, name, **labels)
