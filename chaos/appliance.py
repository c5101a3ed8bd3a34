"""The rehearsal's own appliance: `python -m appliance run` in a private state
folder, on free ports, with an env file of its own; and the faults it can suffer.

Every process is found through the appliance's own supervisord and killed by
its PID, so the rehearsal never touches a process it did not start.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

from appliance import system
from appliance.config import ROOT, Layout
from appliance.supervisor import ProcessInfo, Supervisor
from common.settings import SETTINGS

T = TypeVar("T")

TOKEN = "wxrelaychaos"
APPID = "wx0c4a05rehearsal"
BOT = "chaos/bot.py:bot"
# The layout that ships: the rehearsal sets none of it, so the contract is proven on what users run.
RELAYS = int(SETTINGS["relays"].default)
STANDBY = int(SETTINGS["standby_relays"].default)
WORKERS = int(SETTINGS["workers"].default)
START_TIMEOUT = 150.0
STOP_TIMEOUT = 200.0
PROBE_TIMEOUT = 2.0
QUEUE = "wxrelay"
REDIS = "redis"
NGINX = "nginx"


def reply_budget(window: float) -> float:
    """The last delivery's wait: WeChat's shipped 4.5 s of 5 s, and always inside the window."""
    return round(max(0.8 * window, window - 0.5), 3)


def _client_ports() -> range:
    """The ports the kernel gives outgoing connections (net.ipv4.ip_local_port_range)."""
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(taken: frozenset[int] | set[int] = frozenset()) -> int:
    """A free port below the kernel's range for outgoing connections: one inside it can be held by a
    client's socket (this process's own, or one a killed process left closing) when the appliance
    must listen there again after every process was killed."""
    below = range(10000, _client_ports().start)
    for _ in range(1000):
        port = random.choice(below)
        if port not in taken and _bindable(port):
            return port
    raise RuntimeError(f"no free port from {below.start} to {below.stop - 1}")


def consecutive_free_ports(count: int, taken: set[int]) -> int:
    """The first of `count` consecutive free ports."""
    for _ in range(200):
        first = free_port(taken)
        wanted = range(first, first + count)
        if set(wanted) & taken or first + count >= _client_ports().start:
            continue
        if all(_bindable(port) for port in wanted):
            return first
    raise RuntimeError(f"no run of {count} free ports")


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something true; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (OSError, redis.RedisError, httpx.HTTPError, xmlrpc.client.Error, ValueError):
            value = None  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` in Prometheus text whose labels include these (others any); 0 when none."""
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        metric_name, _, rest = sample.partition("{")
        if metric_name == name and wanted <= set(rest.rstrip("}").split(",")) - {""}:
            total += float(value)
    return total


class _Supervisor(Supervisor):
    def stop_program(self, name: str) -> None:
        self._rpc().stopProcess(name, True)


@dataclass(frozen=True)
class Secrets:
    aes_key: str
    appsecret: str
    redis_password: str
    # The rehearsal's own way in, for what the appliance's user may not do (CONFIG SET maxmemory).
    redis_admin_password: str

    @classmethod
    def fresh(cls) -> Secrets:
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        return cls(
            "".join(secrets.choice(alphabet) for _ in range(43)),
            secrets.token_hex(16),
            "chaos" + secrets.token_hex(12),
            "admin" + secrets.token_hex(12),
        )


class Appliance:
    """One private appliance as it ships (relays, one standing by; workers), Redis and nginx under one supervisord."""

    def __init__(
        self,
        workdir: Path,
        api_base: str,
        window: float,
        keys: Secrets | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.extra = dict(extra or {})
        self.layout = Layout(workdir / "state")
        self.env_file = workdir / "chaos.env"
        self.runs_file = self.layout.state_dir / "chaos-runs"
        self.api_base = api_base
        self.window = window
        self.budget = reply_budget(window)
        self.secrets = keys or Secrets.fresh()
        self.http_port = free_port()
        self.redis_port = free_port({self.http_port})
        self.relay_port = consecutive_free_ports(RELAYS, {self.http_port, self.redis_port})
        # Worker n serves its /metrics on this + n: two appliances of one machine never share one.
        taken = {self.http_port, self.redis_port, *self.relay_ports}
        self.worker_metrics_port = consecutive_free_ports(WORKERS, taken)
        self.supervisor = _Supervisor(self.layout)
        self._redis: redis.Redis | None = None

    # -- the settings ---------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/wechat"

    @property
    def relay_ports(self) -> list[int]:
        return [self.relay_port + n for n in range(RELAYS)]

    @property
    def serving_ports(self) -> list[int]:
        """The relays nginx passes requests to while they are up; the others stand by."""
        return self.relay_ports[: RELAYS - STANDBY]

    @property
    def worker_metrics_ports(self) -> list[int]:
        return [self.worker_metrics_port + n for n in range(WORKERS)]

    @property
    def aes_key(self) -> str:
        return self.secrets.aes_key

    @property
    def redis_url(self) -> str:
        return f"redis://wxrelay:{self.secrets.redis_password}@127.0.0.1:{self.redis_port}/0"

    def settings(self) -> dict[str, str]:
        """The env file: everything at its shipped default but WeChat's window, the ports and the secrets."""
        return {
            "WECHAT_TOKEN": TOKEN,
            "WECHAT_APPID": APPID,
            "WECHAT_AES_KEY": self.secrets.aes_key,
            "WECHAT_APPSECRET": self.secrets.appsecret,
            "WECHAT_API_BASE": self.api_base,
            "WXRELAY_BOT": BOT,
            "WXRELAY_CHAOS_RUNS": str(self.runs_file),
            "WXRELAY_WECHAT_TIMEOUT": str(self.window),
            "WXRELAY_REPLY_BUDGET": str(self.budget),
            "WXRELAY_STATE_DIR": str(self.layout.state_dir),
            "WXRELAY_HTTP_PORT": str(self.http_port),
            "WXRELAY_RELAY_PORT": str(self.relay_port),
            "WXRELAY_REDIS_PORT": str(self.redis_port),
            "WXRELAY_WORKER_METRICS_PORT": str(self.worker_metrics_port),
            "WXRELAY_REDIS_URL": self.redis_url,
            "WXRELAY_REDIS_ADMIN_PASSWORD": self.secrets.redis_admin_password,
            **self.extra,
        }

    def _environ(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("WECHAT_", "WXRELAY_"))}
        return {**clean, "WXRELAY_ENV_FILE": str(self.env_file), "WXRELAY_STATE_DIR": str(self.layout.state_dir)}

    # -- start and stop -------------------------------------------------------------------------------------------

    def _appliance(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "appliance", command],
            cwd=ROOT,
            env=self._environ(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write("".join(f"{name}={value}\n" for name, value in self.settings().items()))
        result = self._appliance("run", START_TIMEOUT)
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"python -m appliance run failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        self.runs_file.touch()

    def doctor(self, environ: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`python -m appliance doctor` against this appliance (`environ`: more variables, e.g. SSL_CERT_FILE)."""
        return subprocess.run(
            [sys.executable, "-m", "appliance", "doctor"],
            cwd=ROOT, env={**self._environ(), **(environ or {})}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def stop(self) -> str:
        if self._redis is not None:
            self._redis.close()
        if not self.env_file.exists():
            return ""
        result = self._appliance("stop", STOP_TIMEOUT)
        return result.stdout + result.stderr

    # -- the processes --------------------------------------------------------------------------------------------

    def processes(self) -> dict[str, ProcessInfo]:
        return {process.name: process for process in self.supervisor.processes()}

    def pid(self, name: str) -> int:
        process = self.processes()[name]
        if not process.running or not process.pid:
            raise RuntimeError(f"{name} is not running ({process.state})")
        return process.pid

    def workers(self) -> list[str]:
        return sorted(name for name in self.processes() if name.startswith("wxrelay-worker:"))

    @staticmethod
    def relay(port: int) -> str:
        return f"wxrelay-relay:relay-{port}"

    def kill(self, name: str) -> int:
        """SIGKILL one program by the PID its supervisord gives; supervisor restarts it."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 60) -> int:
        def again() -> int:
            process = self.processes()[name]
            return process.pid if process.running and process.pid != old_pid else 0

        return wait_until(again, timeout, f"supervisor to restart {name}", interval=0.1)

    def kill_all(self) -> list[int]:
        """SIGKILL supervisord and everything under it at once, as when the host loses every process
        (an OOM storm, a reboot): nobody is left to restart anything. Returns the PIDs killed."""
        supervisord = self.supervisor.pid()
        if supervisord is None:
            raise RuntimeError("supervisord is not running")
        children = {process.pid for process in self.processes().values() if process.pid}
        # supervisord first: it must not see a child die and start another in its place.
        pids = [supervisord, *sorted(children | system.descendants({supervisord} | children) - {supervisord})]
        system.terminate(pids, signal.SIGKILL)
        wait_until(lambda: not any(system.alive(pid) for pid in pids), 10, "every killed process to be gone")
        return pids

    def restart(self) -> str:
        """`python -m appliance run` again, on what the killed one left; returns what it said."""
        result = self._appliance("run", START_TIMEOUT)
        said = result.stdout + result.stderr
        if result.returncode != 0:
            raise RuntimeError(f"python -m appliance run failed ({result.returncode}) after the kill:\n{said}")
        return said

    def stop_program(self, name: str) -> None:
        """Stop a program through supervisor (XML-RPC stopProcess): it stays down until started."""
        self.supervisor.stop_program(name)

    def start_program(self, name: str) -> None:
        self.supervisor.start(name)

    def reload_nginx(self) -> int:
        """SIGHUP to nginx's master: a graceful reload."""
        pid = self.pid(NGINX)
        os.kill(pid, signal.SIGHUP)
        return pid

    # -- Redis ----------------------------------------------------------------------------------------------------

    def redis(self) -> redis.Redis:
        if self._redis is None:
            admin = f"redis://admin:{self.secrets.redis_admin_password}@127.0.0.1:{self.redis_port}/0"
            self._redis = redis.Redis.from_url(
                admin, decode_responses=True, socket_timeout=PROBE_TIMEOUT, socket_connect_timeout=1
            )
        return self._redis

    def maxmemory(self) -> int:
        return int(self.redis().config_get("maxmemory")["maxmemory"])

    def fill_redis(self) -> int:
        """Set maxmemory below what Redis uses now: every write is refused, as when it is full, however
        much the appliance frees meanwhile (records expiring, a queue draining); returns the limit it had."""
        before = self.maxmemory()
        used = int(self.redis().info("memory")["used_memory"])
        self.redis().config_set("maxmemory", used // 2)
        return before

    def set_maxmemory(self, limit: int) -> None:
        self.redis().config_set("maxmemory", limit)

    # -- the relays' probes ---------------------------------------------------------------------------------------

    def metric(self, port: int, name: str, **labels: str) -> float:
        """A relay's /metrics samples of `name` with these labels, summed (see `metric`)."""
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=PROBE_TIMEOUT, trust_env=False).text
        return metric(text, name, **labels)

    def held(self) -> dict[int, int]:
        """Deliveries each relay holds open right now, by port."""
        return {port: int(self.metric(port, "wxrelay_deliveries_held")) for port in self.relay_ports}

    def health(self, port: int) -> dict[str, Any]:
        """A relay's /healthz report, with its HTTP status as `http_status`."""
        answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=PROBE_TIMEOUT, trust_env=False)
        return {**answer.json(), "http_status": answer.status_code}

    def ready(self) -> bool:
        """Every program running; every relay on Redis and its reply channel, with every worker seen and
        nothing spooled. (A ledger error of the last 30 s keeps /healthz at 503: not waited for.)"""
        processes = self.processes().values()
        if not processes or not all(process.running for process in processes):
            return False
        for port in self.relay_ports:
            report = self.health(port)
            if not (report["redis"] and report["reply_channel"] and report["workers"] >= WORKERS):
                return False
            if report.get("spooled"):
                return False
        return True

    def wait_ready(self, timeout: float = 90) -> None:
        wait_until(self.ready, timeout, "the appliance to be ready", interval=0.2)
