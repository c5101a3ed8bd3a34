"""The systems under test: the appliance and the two baselines.

The appliance is started by the local runner (`python -m appliance run`) in a
private state folder on free ports; until that runner exists, or with
`--stack direct`, the benchmark starts the same processes itself from the same
deploy/ templates (Redis, Celery workers, relays, nginx). The baselines share
the appliance's Redis, each on a database of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import jinja2
import redis

from appliance.render import NGINX_WORKER_CONNECTIONS, nginx_user
from bench import callbacks
from bench.procs import ROOT, Proc, children, command, free_port, wait_until
from common.settings import SETTINGS

SUITE_BOT = f"{ROOT}/bench/bots/suite.py:bot"
SLOW_RUNS_KEY = "bench:slow:runs"


def _binary(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)
    if path is None:
        raise RuntimeError(f"{name} is not installed (apt-get install {name})")
    return path


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("WECHAT_", "WXRELAY_", "BENCH_"))}


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def app_settings(redis_url: str | None, concurrency: int | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The appliance's configuration for the benchmark (`extra`: the run's own additions, e.g. its fake WeChat API)."""
    values = {
        "WECHAT_TOKEN": callbacks.TOKEN,
        "WECHAT_APPID": callbacks.APPID,
        "WECHAT_AES_KEY": callbacks.AES_KEY,
        "WXRELAY_BOT": SUITE_BOT,
        "WXRELAY_LOG_LEVEL": "INFO",
    }
    if concurrency is not None:  # else the appliance's default
        values["WXRELAY_WORKER_CONCURRENCY"] = str(concurrency)
    if redis_url:
        values["WXRELAY_REDIS_URL"] = redis_url
    values.update(extra or {})
    return values


class System:
    """What a scenario needs of a system under test."""

    name = ""
    label = ""
    host = ""  # host:port of the callback URL
    redis_url = ""
    # The benchmark's own way into Redis, for what the appliance's user may not do (FLUSHDB).
    admin_url = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}/wechat"

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.admin_url or self.redis_url, decode_responses=True)

    def processes(self) -> list[tuple[str, int]]:
        raise NotImplementedError

    def settle(self, timeout: float) -> bool:
        """Let the last run's backlog go before the next run; True when nothing was left."""
        raise NotImplementedError

    def slow_runs(self) -> dict[str, int]:
        """Executions of the slow bot by MsgId."""
        return {k: int(v) for k, v in self.redis().hgetall(SLOW_RUNS_KEY).items()}


class ApplianceBase(System):
    name = "appliance"
    label = "wxrelay appliance"
    queue = "wxrelay"
    # Written into its settings at start, beside app_settings(): set before start().
    extra_settings: dict[str, str] = {}

    def relay_ports(self) -> list[int]:
        """The port of each relay process (each serves its own /metrics)."""
        ports = []
        for _, pid in self.processes():
            words = command(pid).split()
            if "relay" in words and "-m" in words and "--port" in words:
                ports.append(int(words[words.index("--port") + 1]))
        return sorted(set(ports))

    def settle(self, timeout: float) -> bool:
        client = self.redis()

        def idle() -> bool:
            # Sweeps (scheduled when a run's last requests were cut off) wait
            # for their ETA among the unacknowledged messages: they are no backlog.
            if client.llen(self.queue):
                return False
            return all(_has_eta(entry) for entry in client.hvals("unacked"))

        try:
            wait_until(idle, timeout, "the appliance's queue to drain", interval=0.1)
        except TimeoutError:
            return False
        return True


class ApplianceRunner(ApplianceBase):
    """The appliance as `python -m appliance run` starts it: everything under one supervisord,
    configuration rendered from deploy/ into a private state folder, on free ports."""

    def __init__(self, workdir: Path, relays: int | None = None, workers: int | None = None,
                 concurrency: int | None = None, standby: int | None = None) -> None:  # fmt: skip
        self.workdir = workdir
        self.state = workdir / "state"
        self.env_file = workdir / "bench.env"
        self.relays, self.workers, self.concurrency, self.standby = relays, workers, concurrency, standby
        self.http_port = free_port()
        self.redis_port = free_port()
        count = relays or int(SETTINGS["relays"].default)
        self.relay_port = consecutive_free_ports(count, taken={self.http_port, self.redis_port})
        # Worker n serves its /metrics on this + n: two appliances of one machine never share one.
        taken = {self.http_port, self.redis_port, *range(self.relay_port, self.relay_port + count)}
        self.worker_metrics_port = consecutive_free_ports(workers or int(SETTINGS["workers"].default), taken)
        self.host = f"127.0.0.1:{self.http_port}"
        self.password = "bench" + os.urandom(8).hex()
        self.admin_password = "admin" + os.urandom(8).hex()
        self.redis_url = f"redis://wxrelay:{self.password}@127.0.0.1:{self.redis_port}/0"
        self.admin_url = f"redis://admin:{self.admin_password}@127.0.0.1:{self.redis_port}/0"

    def _env(self) -> dict[str, str]:
        env = {
            **_clean_env(),
            "WXRELAY_STATE_DIR": str(self.state),
            "WXRELAY_ENV_FILE": str(self.env_file),
            "WXRELAY_HTTP_PORT": str(self.http_port),
            "WXRELAY_RELAY_PORT": str(self.relay_port),
            "WXRELAY_REDIS_PORT": str(self.redis_port),
            "WXRELAY_WORKER_METRICS_PORT": str(self.worker_metrics_port),
        }
        if self.relays:
            env["WXRELAY_RELAYS"] = str(self.relays)
        if self.standby is not None:
            env["WXRELAY_STANDBY_RELAYS"] = str(self.standby)
        if self.workers:
            env["WXRELAY_WORKERS"] = str(self.workers)
        return env

    def _appliance(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "appliance", command],
            cwd=ROOT, env=self._env(), capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        settings = {
            **app_settings(self.redis_url, self.concurrency, self.extra_settings),
            "WXRELAY_REDIS_PORT": str(self.redis_port),
            "WXRELAY_REDIS_ADMIN_PASSWORD": self.admin_password,
        }
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        result = self._appliance("run", timeout=150)
        if result.returncode != 0:
            self._appliance("stop", timeout=150)
            raise RuntimeError(f"python -m appliance run failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def supervisord(self) -> int | None:
        try:
            return int((self.state / "run" / "supervisord.pid").read_text())
        except (OSError, ValueError):
            return None

    def processes(self) -> list[tuple[str, int]]:
        root = self.supervisord()
        if root is None:
            return []
        return [("supervisord", root)] + [(_program(command(pid)), pid) for pid in sorted(children(root))]

    def stop(self) -> None:
        if self.state.exists():
            self._appliance("stop", timeout=200)


def _program(cmdline: str) -> str:
    """A readable name for a process of the appliance."""
    words = cmdline.split()
    if not words:
        return "?"
    if "-m relay" in cmdline:
        return f"relay :{words[words.index('--port') + 1]}" if "--port" in words else "relay"
    if "celery" in cmdline and "worker" in words:
        name = words[words.index("-n") + 1].split("@")[0] if "-n" in words else ""
        return f"celery {name}".strip()
    if words[0].startswith("nginx"):
        return "nginx " + ("master" if "master" in cmdline else "worker")
    if "redis-server" in words[0]:
        return "redis-server"
    return _short(cmdline)


def consecutive_free_ports(count: int, taken: set[int]) -> int:
    """The first of `count` consecutive ports that are all free."""
    for _ in range(200):
        first = free_port()
        wanted = set(range(first, first + count))
        if wanted & taken or first + count >= 65536:
            continue
        try:
            for port in wanted:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no run of {count} free ports")


class DirectAppliance(ApplianceBase):
    """The appliance's processes started by the benchmark itself, from deploy/ templates."""

    def __init__(self, workdir: Path, relays: int | None = None, workers: int = 2, concurrency: int | None = None,
                 standby: int | None = None) -> None:  # fmt: skip
        self.workdir = workdir
        self.relays = relays or int(SETTINGS["relays"].default)
        self.standby = standby if standby is not None else int(SETTINGS["standby_relays"].default)
        self.workers, self.concurrency = workers, concurrency
        self.procs: list[Proc] = []
        self.http_port = free_port()
        self.host = f"127.0.0.1:{self.http_port}"
        self.redis_port = free_port()
        self.password = "bench" + os.urandom(8).hex()
        self.admin_password = "admin" + os.urandom(8).hex()
        self.redis_url = f"redis://wxrelay:{self.password}@127.0.0.1:{self.redis_port}/0"
        self.admin_url = f"redis://admin:{self.admin_password}@127.0.0.1:{self.redis_port}/0"

    def start(self) -> None:
        logs, run = self.workdir / "log", self.workdir / "run"
        for folder in (logs, run, self.workdir / "redis"):
            folder.mkdir(parents=True, exist_ok=True)
        templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(ROOT / "deploy"), undefined=jinja2.StrictUndefined
        )
        env_file = self.workdir / "bench.env"
        settings = app_settings(self.redis_url, self.concurrency, self.extra_settings)
        # worker1 … workerN serve their /metrics on this + 1 … + N.
        settings["WXRELAY_WORKER_METRICS_PORT"] = str(consecutive_free_ports(self.workers + 1, {self.http_port}))
        env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        env = {**_clean_env(), "WXRELAY_ENV_FILE": str(env_file)}

        redis_conf = self.workdir / "redis.conf"
        redis_conf.write_text(
            templates.get_template("redis/redis.conf.j2").render(
                wxrelay_redis_bind="127.0.0.1",
                wxrelay_redis_port=self.redis_port,
                wxrelay_redis_user="wxrelay",
                wxrelay_redis_password_sha256=hashlib.sha256(self.password.encode()).hexdigest(),
                wxrelay_redis_admin_password_sha256=hashlib.sha256(self.admin_password.encode()).hexdigest(),
                wxrelay_redis_channel_rules="&*",
                wxrelay_redis_dir=self.workdir / "redis",
                wxrelay_redis_logfile="",
                wxrelay_redis_maxmemory="256mb",
            )
        )
        server = Proc("redis", [_binary("redis-server"), str(redis_conf)], logs)
        self.procs.append(server)
        server.wait_ready(self.redis().ping)

        for n in range(1, self.workers + 1):
            argv = [sys.executable, "-m", "celery", "-A", "appserver", "worker", "--loglevel", "INFO",
                    "-n", f"worker{n}@%h", "--without-mingle", "--without-gossip"]  # fmt: skip
            self.procs.append(Proc(f"worker-{n}", argv, logs, env))
        relay_port = free_port()
        ports = [relay_port + n for n in range(self.relays)]
        for port in ports:
            self.procs.append(Proc(f"relay-{port}", [sys.executable, "-m", "relay", "--port", str(port)], logs, env))

        site = self.workdir / "wxrelay-nginx.conf"
        site.write_text(
            templates.get_template("nginx/wxrelay.conf.j2").render(
                wxrelay_relay_hosts=["127.0.0.1"],
                wxrelay_relays=self.relays,
                wxrelay_standby_relays=self.standby,
                wxrelay_relay_port=relay_port,
                wxrelay_http_port=self.http_port,
                wxrelay_listen_default=False,
                wxrelay_tls_certificate="",
                wxrelay_server_name="_",
                wxrelay_max_body="64k",
                wxrelay_proxy_read_timeout=12,
            )
        )
        nginx_conf = self.workdir / "nginx.conf"
        nginx_conf.write_text(
            templates.get_template("nginx/nginx.conf.j2").render(
                wxrelay_run_dir=run,
                wxrelay_log_dir=logs,
                wxrelay_nginx_site=site,
                wxrelay_nginx_user=nginx_user(),
                nginx_worker_connections=NGINX_WORKER_CONNECTIONS,
            )
        )
        argv = [_binary("nginx"), "-c", str(nginx_conf), "-p", str(run), "-e", str(logs / "nginx-error.log")]
        nginx = Proc("nginx", argv, logs)
        self.procs.append(nginx)

        client = self.redis()
        hostname = socket.gethostname()
        for n in range(1, self.workers + 1):
            name = f"worker{n}@{hostname}"
            self.procs[n].wait_ready(partial(lambda name: client.zscore("wxrelay:workers", name) is not None, name))
        for port, proc in zip(ports, self.procs[1 + self.workers :], strict=True):
            proc.wait_ready(partial(_healthy, f"http://127.0.0.1:{port}/healthz"))
        nginx.wait_ready(lambda: httpx.get(f"http://{self.host}/healthz", timeout=2).status_code == 200)

    def processes(self) -> list[tuple[str, int]]:
        found = []
        for proc in self.procs:
            if proc.alive():
                found.append((proc.name, proc.pid))
                found += [(f"{proc.name} ({_short(command(pid))})", pid) for pid in children(proc.pid)]
        return found

    def stop(self) -> None:
        # Front to back, Redis last.
        for proc in reversed(self.procs):
            proc.stop(signal.SIGQUIT if proc.name.startswith("worker") else signal.SIGTERM)
        self.procs.clear()


def _healthy(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def _short(cmdline: str) -> str:
    return cmdline.split(" ")[0].rsplit("/", 1)[-1] if cmdline else "?"


class Baseline(System):
    """One baseline design: its Tornado process and its default Celery worker."""

    DESIGNS = {
        "sync": ("bench.baselines.sync_get", "baseline: .get()", "Tornado handler blocking on send_task(...).get()"),
        "poll": ("bench.baselines.polling", "baseline: polling", "Tornado handler polling AsyncResult.ready()"),
    }
    queue = "celery"

    def __init__(self, design: str, shared: System, redis_url: str, workdir: Path) -> None:
        self.design = design
        self.shared = shared
        self.module, self.label, self.description = self.DESIGNS[design]
        self.name = f"baseline-{design}"
        self.workdir = workdir
        self.redis_url = redis_url
        self.admin_url = _with_db(shared.admin_url, int(redis_url.rsplit("/", 1)[1]))
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.logs = self.workdir / "log"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis().flushdb()
        self.env = {
            **_clean_env(),
            **app_settings(self.redis_url, 1),
            "WXRELAY_ENV_FILE": os.devnull,
            "BENCH_BASELINE_REDIS_URL": self.redis_url,
            "BENCH_BOT": SUITE_BOT,
        }
        self.worker = Proc(f"{self.name}-worker", [sys.executable, "-m", "celery", "-A", "bench.baselines.celery_app",
                                                   "worker", "-n", f"{self.name}@%h"], self.logs, self.env)  # fmt: skip
        self._start_server(timeout=40)

    def _start_server(self, timeout: float = 20) -> None:
        argv = [sys.executable, "-m", self.module, "--port", str(self.port)]
        self.server = Proc(f"{self.name}-tornado", argv, self.logs, self.env)
        # Ready when a real message makes the whole round trip.
        self.server.wait_ready(lambda: self.worker.check() and self._answers(), timeout=timeout)

    @property
    def procs(self) -> list[Proc]:
        return [p for p in (getattr(self, "worker", None), getattr(self, "server", None)) if p is not None]

    def _answers(self) -> bool:
        request = callbacks.build(callbacks.new_msg_id(), "plain", self.host, content="echo ready")
        head, _, body = request.partition(b"\r\n\r\n")
        target = head.split(b" ")[1].decode()
        answer = httpx.post(f"http://{self.host}{target}", content=body, timeout=5)
        return answer.status_code == 200 and b"echo ready" in answer.content

    def processes(self) -> list[tuple[str, int]]:
        """Its Tornado process, its worker and the worker's children, and the Redis it shares with the
        appliance: each design needs one, and what Redis does for it counts as its CPU."""
        found = []
        for proc in self.procs:
            if proc.alive():
                found.append((proc.name, proc.pid))
                found += [(f"{proc.name} (child)", pid) for pid in children(proc.pid)]
        found += [(f"{name} (shared)", pid) for name, pid in self.shared.processes() if "redis" in name]
        return found

    def settle(self, timeout: float) -> bool:
        """Start the next run from scratch: a baseline falls minutes behind under load, and its
        Tornado process goes on blocking on (or polling for) the results of requests the load
        generator gave up on, for as long as they take. So: drop what is queued, let the worker
        finish the few tasks it already took, and restart the Tornado process."""
        client = self.redis()
        left = client.llen(self.queue)
        self.server.stop(signal.SIGKILL, timeout=5)
        client.delete(self.queue)
        try:
            wait_until(lambda: client.hlen("unacked") == 0, timeout, f"{self.name}'s worker to go idle", interval=0.1)
        except TimeoutError:
            return False
        finally:
            self._start_server()
        return left == 0

    def queued_msg_ids(self) -> list[str]:
        """MsgIds of the tasks still waiting in Redis (queued or taken but not started)."""
        client = self.redis()
        raw = client.lrange(self.queue, 0, -1) + list(client.hgetall("unacked").values())
        ids = []
        for item in raw:
            try:
                message = json.loads(item)
                if isinstance(message, list):  # kombu's unacked entries: [payload, exchange, routing_key]
                    message = message[0]
                args = json.loads(base64.b64decode(message["body"]))[0]
                ids.append(_msg_id(args[0]))
            except (ValueError, KeyError, IndexError, TypeError):
                continue
        return ids

    def restart(self) -> None:
        """From scratch: its processes stopped, its Redis database emptied, started again. For a
        scenario after one that left minutes of queued (and prefetched) slow tasks behind."""
        self.stop()
        self.start()

    def quiesce(self) -> None:
        """Its Tornado process stopped and its queue dropped, without waiting for the tasks its worker
        already took: the end of a scenario after which nothing more is asked of it."""
        self.server.stop(signal.SIGKILL, timeout=5)
        self.redis().delete(self.queue)

    def stop(self) -> None:
        # A blocked .get() or a worker busy with an 8 s handler: no warm shutdown.
        for proc in reversed(self.procs):
            proc.stop(signal.SIGKILL, timeout=5)


def _has_eta(entry: str) -> bool:
    try:
        return bool(json.loads(entry)[0]["headers"].get("eta"))
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def _msg_id(xml: str) -> str:
    start = xml.find("<MsgId>")
    return xml[start + 7 : xml.find("</MsgId>")] if start >= 0 else ""


def baselines_for(appliance: System, workdir: Path) -> list[Baseline]:
    return [
        Baseline("sync", appliance, _with_db(appliance.redis_url, 1), workdir),
        Baseline("poll", appliance, _with_db(appliance.redis_url, 2), workdir),
    ]


def describe(system: System) -> dict[str, Any]:
    return {"name": system.name, "label": system.label, "url": system.url}
