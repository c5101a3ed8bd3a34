"""The health of the chain a message travels: nginx → relays → Redis → workers."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import redis

from appliance import config
from appliance.config import Layout, Local
from appliance.supervisor import ProcessInfo, Supervisor
from common import problems
from wechat.exceptions import InvalidConfigError

PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Check:
    part: str
    ok: bool
    detail: str

    def line(self, width: int = 8) -> str:
        return f"  {'✓' if self.ok else '✗'} {self.part:<{width}} {self.detail}"


def chain(local: Local) -> list[Check]:
    return chain_of(local.settings.http_port, local.relay_ports, local.redis_url, local.settings.workers)


def chain_of(http_port: int, relay_ports: list[int], redis_url: str, workers: int) -> list[Check]:
    """nginx on `http_port`, each relay, Redis, and the workers the relays see."""
    # trust_env=False: a proxy configured for the user's browser has no business here.
    with httpx.Client(timeout=PROBE_TIMEOUT, trust_env=False) as client:
        checks = [_nginx(client, http_port)]
        seen = 0
        for port in relay_ports:
            check, found = _relay(client, port)
            checks.append(check)
            seen = max(seen, found)
    checks.append(redis_check(redis_url))
    checks.append(Check("workers", seen >= workers, f"{seen} of {workers} seen by the relays"))
    return checks


def through_nginx(local: Local) -> bool:
    """What WeChat would find: the relays' /healthz, through nginx, says 200."""
    try:
        url = f"http://127.0.0.1:{local.settings.http_port}/healthz"
        return httpx.get(url, timeout=PROBE_TIMEOUT, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def listens(relay_port: int) -> bool:
    """The relay on this port answers its liveness probe."""
    try:
        return httpx.get(f"http://127.0.0.1:{relay_port}/livez", timeout=PROBE_TIMEOUT, trust_env=False).is_success
    except httpx.HTTPError:
        return False


def _nginx(client: httpx.Client, http_port: int) -> Check:
    where = f":{http_port} /livez"
    try:
        status = client.get(f"http://127.0.0.1:{http_port}/livez").status_code
    except httpx.HTTPError as exc:
        return Check("nginx", False, f"{where} → {reason(exc)}")
    return Check("nginx", status == 200, f"{where} → {status}")


def _relay(client: httpx.Client, port: int) -> tuple[Check, int]:
    where = f":{port} /healthz"
    try:
        response = client.get(f"http://127.0.0.1:{port}/healthz")
        report = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return Check("relay", False, f"{where} → {reason(exc)}"), 0
    parts = [
        f"redis {'ok' if report.get('redis') else 'unreachable'}",
        f"{report.get('workers', 0)} workers",
        f"reply channel {'ok' if report.get('reply_channel') else 'down'}",
    ]
    return Check("relay", response.status_code == 200, f"{where} → {', '.join(parts)}"), int(report.get("workers", 0))


def redis_check(url: str) -> Check:
    where = f":{urlsplit(url).port or 6379} PING"
    client = redis.Redis.from_url(url, socket_timeout=PROBE_TIMEOUT)
    try:
        return Check("redis", bool(client.ping()), f"{where} → PONG")
    except redis.RedisError as exc:
        return Check("redis", False, f"{where} → {exc}")
    finally:
        client.close()


def reason(exc: Exception) -> str:
    """Why a probe over HTTP failed, in a few words."""
    if isinstance(exc, httpx.ConnectError):
        return "nothing listening, or no route"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    return str(exc) or type(exc).__name__


def last_minute(local: Local) -> str:
    """The relays' deliveries and rejections of the last minute, and the bot's failures, in a line."""
    messages: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    with httpx.Client(timeout=PROBE_TIMEOUT, trust_env=False) as client:
        for port in local.relay_ports:
            try:
                seen = client.get(f"http://127.0.0.1:{port}/healthz").json().get("last_minute", {})
            except (httpx.HTTPError, ValueError):
                continue  # the chain says why
            messages.update(seen.get("messages", {}))
            rejected.update(seen.get("rejected", {}))
    parts = [_tally(messages, "messages"), _tally(rejected, "rejected")]
    client = redis.Redis.from_url(local.redis_url, socket_timeout=PROBE_TIMEOUT)
    try:
        failures = Counter(problem.kind for problem in problems.since(client, time.time() - 60))
    except redis.RedisError:
        failures = None
    finally:
        client.close()
    if failures is not None:
        parts.append(f"{failures[problems.HANDLER]} bot failures, {failures[problems.LATE]} late replies refused")
    return "; ".join(parts)


def _tally(counts: Counter[str], what: str) -> str:
    total = sum(counts.values())
    if not total:
        return f"0 {what}"
    return f"{total} {what} ({', '.join(f'{name} {n}' for name, n in counts.most_common())})"


def program_line(process: ProcessInfo) -> str:
    return f"  {process.name:<28} {process.state:<9} {process.description}"


def healthy(processes: list[ProcessInfo], checks: list[Check]) -> bool:
    return bool(processes) and all(p.running for p in processes) and all(c.ok for c in checks)


def account_lines(local: Local) -> list[str]:
    try:
        served = local.accounts()
    except InvalidConfigError as exc:
        return [f"  the accounts file does not load now: {exc} (the running relays keep what they had)"]
    width = max(len(name) for name in served)
    return [
        f"  {name:<{width}}  {account.kind:<8}  {account.path:<{width + 8}}  {', '.join(sorted(account.modes))}"
        + ("" if account.redis_url == local.redis_url else "  (its own Redis)")
        for name, account in served.items()
    ]


def report(layout: Layout) -> int:
    """`status`: each process and the chain, exit 0 only when all is healthy."""
    local = config.from_state(layout)
    supervisor = Supervisor(layout)
    pid = supervisor.pid()
    if local is None or pid is None:
        print(f"wxrelay is not running (state folder {layout.state_dir}); make run starts it")
        return 1
    if not supervisor.answers():
        print(f"supervisord (pid {pid}) does not answer on {layout.socket}; make stop, then make run")
        return 1
    processes = supervisor.processes()
    print(f"wxrelay in {layout.state_dir}: supervisord pid {pid}")
    for process in processes:
        print(program_line(process))
    print("accounts:")
    for line in account_lines(local):
        print(line)
    checks = chain(local)
    print("chain:")
    for check in checks:
        print(check.line())
    print(f"last minute: {last_minute(local)}")
    if healthy(processes, checks):
        print("all healthy")
        return 0
    sick = [p.name for p in processes if not p.running] + [c.part for c in checks if not c.ok]
    print(f"unhealthy: {', '.join(dict.fromkeys(sick))} (make logs shows why)")
    return 1
