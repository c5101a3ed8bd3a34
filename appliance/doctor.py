"""`make doctor`: every link a message travels, checked, and what is wrong said in one line with its fix.

The failures an owner meets when pointing a real account at a fresh appliance are few and each hides in a
different place: a process down, the chain nginx → relays → Redis → workers broken, a clock out of
WeChat's timestamp window, a URL WeChat cannot verify, a certificate about to expire, an AppSecret or an
IP whitelist WeChat refuses, no customer-service permission, Redis nearly full, a bot that raises. The
doctor asks each, from the host itself (locally, or on a deployed host through Ansible), and prints a
line per check: ✓ and what it saw, or ✗ and what to do. Exit 0 only when every check passes.
"""

from __future__ import annotations

import email.utils
import socket
import ssl
import subprocess
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import redis

from appliance import config, status
from appliance.config import Layout
from appliance.status import Check
from appliance.supervisor import ProcessInfo, Supervisor, processes_at
from appserver.access_token import TokenError, owner_of
from common import accounts, problems
from common.accounts import WECOM, Account, Accounts
from common.settings import Settings
from simulator.client import WeChatSimulator
from wechat import errcodes

PROBE_TIMEOUT = 5.0
# Past this much drift from WeChat's clock the doctor speaks up, well inside the window the relays keep.
CLOCK_TOLERANCE = 60
CERTIFICATE_DAYS = 14
REDIS_MEMORY_SHARE = 0.8
# The bot's failures the doctor groups: the last hour's.
FAILURES_SINCE = 3600
CUSTOMER_SERVICE = "/cgi-bin/message/custom/send"


@dataclass(frozen=True)
class Site:
    """What the doctor examines: a local appliance, or the host an Ansible deploy provisioned."""

    where: str
    settings: Settings
    accounts: Accounts
    redis_url: str
    http_port: int
    relay_ports: list[int]
    workers: int
    processes: Callable[[], list[ProcessInfo]]
    # A VPS must keep its clock by NTP; a developer's machine is its owner's business.
    server: bool


def local_site(layout: Layout) -> Site | None:
    """The appliance `make run` started in this state folder; None if it never did."""
    local = config.from_state(layout)
    if local is None:
        return None
    return Site(
        f"the local appliance in {layout.state_dir}", local.settings, local.accounts(), local.redis_url,
        local.settings.http_port, local.relay_ports, local.settings.workers, Supervisor(layout).processes, False,
    )  # fmt: skip


def server_site(env_file: Path, http_port: int, supervisor_socket: str, relays: bool, workers: bool) -> Site:
    """A host `make deploy` provisioned: its env file, its nginx's port and its supervisord; what it runs."""
    settings = Settings.from_env({}, env_file).validate()
    ports = [settings.relay_port + n for n in range(settings.relays)] if relays else []
    return Site(
        f"{socket.gethostname()} ({env_file})", settings, accounts.load(settings), settings.redis_url,
        http_port if relays else 0, ports, settings.workers if workers else 0,
        lambda: processes_at(supervisor_socket), True,
    )  # fmt: skip


def examine(site: Site) -> list[Check]:
    checks = list(_services(site))
    if site.relay_ports:
        checks += status.chain_of(site.http_port, site.relay_ports, site.redis_url, site.workers)
        nginx = f"http://127.0.0.1:{site.http_port}"
        checks += [_verification(account, nginx) for account in site.accounts.values()]
    else:
        checks.append(status.redis_check(site.redis_url))
    checks += list(_clock(site))
    checks += list(_public(site))
    for account in site.accounts.values():
        checks += list(_wechat_api(account))
    checks += list(_redis(site))
    return checks


def report(site: Site) -> int:
    print(f"wxrelay doctor: {site.where}")
    checks = examine(site)
    width = max(len(check.part) for check in checks)
    for check in checks:
        print(check.line(width))
    sick = [check for check in checks if not check.ok]
    if not sick:
        print("all good")
        return 0
    print(f"{len(sick)} of {len(checks)} checks failed")
    return 1


def _services(site: Site) -> Iterator[Check]:
    try:
        processes = site.processes()
    except (OSError, xmlrpc.client.Error) as exc:
        yield Check(
            "services",
            False,
            f"supervisord does not answer ({exc}): start it (make run, or on a server sudo systemctl start supervisor)",
        )
        return
    down = [process for process in processes if not process.running]
    if not processes:
        yield Check("services", False, "supervisord runs no program: make run (or make deploy) sets them up")
    elif down:
        names = ", ".join(f"{process.name} ({process.state})" for process in down)
        yield Check(
            "services",
            False,
            f"{names} not running: its log says why (make logs); supervisor restarts it, "
            "or start it with supervisorctl start",
        )
    else:
        yield Check("services", True, f"{len(processes)} programs running")


def _verification(account: Account, origin: str, part: str = "verify") -> Check:
    """URL verification as WeChat's console does it, signed with the account's token."""
    url = origin.rstrip("/") + account.path
    mode = WECOM if account.kind == WECOM else "plain"
    simulator = WeChatSimulator(
        url,
        account.token,
        account.appid,
        account.aes_key,
        mode=mode,
        deadline=PROBE_TIMEOUT,
        corpid=account.appid if account.kind == WECOM else "",
        agentid=account.agentid,
    )
    answer = simulator.verify_url()
    part = f"{part} {account.name}"
    if answer.ok:
        return Check(part, True, f"{url} answers WeChat's URL verification")
    refusal = answer.body.decode("utf-8", "replace").strip()
    if answer.outcome == 403 and refusal == "source address not allowed":
        # WXRELAY_ALLOWED_SOURCES lets in WeChat's addresses, not this host's: the link answers, the Token
        # is WeChat's to try.
        return Check(part, True, f"{url} answers; only WXRELAY_ALLOWED_SOURCES may call it, so not signed from here")
    if answer.outcome == 403 and refusal == "stale timestamp":
        why = "refused the timestamp (403): this host's clock is off; see the clock check"
    elif answer.outcome == 403:
        why = f"refused the signature (403: {refusal}): the Token in the admin console must be this account's token"
    elif answer.outcome == "unreachable":
        why = "is not reachable: open ports 80/443 in the firewall and check the DNS name"
    elif answer.outcome == "timeout":
        why = "did not answer in time"
    else:
        why = f"answered {answer.outcome} {refusal[:80]!r} instead of the echostr"
    return Check(part, False, f"{url} {why}")


def _clock(site: Site) -> Iterator[Check]:
    base = site.settings.api_base.rstrip("/")
    try:
        # Any answer carries WeChat's Date: a call without a token is refused, and costs no quota.
        response = httpx.get(f"{base}/cgi-bin/getcallbackip", timeout=PROBE_TIMEOUT, trust_env=False)
        theirs = email.utils.parsedate_to_datetime(response.headers["date"]).timestamp()
    except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
        yield Check(
            "clock",
            False,
            f"cannot read WeChat's clock from {base} ({status.reason(exc)}): the workers cannot "
            "reach WeChat's API either: check this server's outbound network and DNS",
        )
    else:
        drift = time.time() - theirs
        window = site.settings.timestamp_window
        if abs(drift) > CLOCK_TOLERANCE:
            side = "ahead of" if drift > 0 else "behind"
            yield Check(
                "clock",
                False,
                f"this clock is {abs(drift):.0f} s {side} WeChat's: relays refuse "
                f"messages more than {window} s off; set it right and keep NTP on (timedatectl set-ntp true)",
            )
        else:
            yield Check("clock", True, f"within {abs(drift):.0f} s of WeChat's (relays accept ±{window} s)")
    if site.server:
        yield _ntp()


def _ntp() -> Check:
    try:
        found = subprocess.run(
            ["timedatectl", "show", "--property=NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("ntp", False, f"cannot ask timedatectl ({exc}): install systemd-timesyncd, or chrony")
    if found == "yes":
        return Check("ntp", True, "the clock is synchronised by NTP")
    return Check(
        "ntp",
        False,
        "the clock is not synchronised by NTP: sudo timedatectl set-ntp true (the base role "
        "installs systemd-timesyncd)",
    )


def _public(site: Site) -> Iterator[Check]:
    public = site.settings.public_url
    if not public:
        return
    url = urlsplit(public)
    origin = f"{url.scheme}://{url.netloc}"
    for account in site.accounts.values():
        yield _verification(account, origin, "public")
    if url.scheme == "https":
        yield _certificate(url.hostname or "", url.port or 443)


def _certificate(host: str, port: int) -> Check:
    part = "certificate"
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as raw:
            with ssl.create_default_context().wrap_socket(raw, server_hostname=host) as tls:
                found = tls.getpeercert()
    except ssl.SSLCertVerificationError as exc:
        return Check(
            part,
            False,
            f"{host}'s certificate does not verify ({exc.verify_message}): WeChat will not "
            "call it; install one a public CA signed, for this name",
        )
    except (OSError, ssl.SSLError) as exc:
        return Check(part, False, f"no TLS on {host}:{port} ({exc}): check nginx's TLS settings")
    expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(found["notAfter"]), UTC)
    days = (expires - datetime.now(UTC)).days
    if days < CERTIFICATE_DAYS:
        return Check(
            part,
            False,
            f"{host}'s certificate expires in {days} days ({expires:%Y-%m-%d}): renew it "
            "(certbot renew, or a new wxrelay_tls_certificate_src and make deploy)",
        )
    return Check(part, True, f"{host}'s certificate is valid for {days} more days")


def _wechat_api(account: Account) -> Iterator[Check]:
    if not account.secret:
        return
    client = redis.Redis.from_url(account.redis_url, socket_timeout=PROBE_TIMEOUT)
    try:
        with httpx.Client(timeout=PROBE_TIMEOUT, trust_env=False) as http:
            owner = owner_of(account, client, http)
            if owner is None:
                return
            try:
                token, expires_in = owner.ask()
            except TokenError as exc:
                yield Check(f"token {account.name}", False, errcodes.explain(exc.errcode or 0, exc.errmsg))
                return
            except httpx.HTTPError as exc:
                yield Check(f"token {account.name}", False, f"WeChat's API is not reachable ({status.reason(exc)})")
                return
            yield Check(f"token {account.name}", True, f"WeChat hands out its access_token (valid {expires_in} s)")
            if account.kind != WECOM and account.late_replies and account.late_path == "api":
                yield _customer_service(http, account, token)
    finally:
        client.close()


def _customer_service(http: httpx.Client, account: Account, token: str) -> Check:
    part = f"late replies {account.name}"
    try:
        answer = http.post(
            f"{account.api_base.rstrip('/')}/cgi-bin/openapi/quota/get",
            params={"access_token": token},
            json={"cgi_path": CUSTOMER_SERVICE},
        ).json()
    except (httpx.HTTPError, ValueError) as exc:
        return Check(part, False, f"cannot ask WeChat for the customer-service quota ({status.reason(exc)})")
    errcode = answer.get("errcode", 0)
    if errcode == 0:
        quota = answer.get("quota") or {}
        return Check(part, True, f"the customer-service API is open ({quota.get('remain', '?')} sends left today)")
    return Check(part, False, errcodes.explain(errcode, str(answer.get("errmsg", ""))))


def _redis(site: Site) -> Iterator[Check]:
    client = redis.Redis.from_url(site.redis_url, socket_timeout=PROBE_TIMEOUT)
    try:
        memory = client.info("memory")
        failures = problems.since(client, time.time() - FAILURES_SINCE)
    except redis.RedisError as exc:
        yield Check("redis", False, f"cannot read Redis's memory and the bot's failures: {exc}")
        return
    finally:
        client.close()
    used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
    if not limit:
        yield Check(
            "memory",
            False,
            "Redis has no maxmemory: set one (wxrelay_redis_maxmemory), or a backlog takes the whole server's memory",
        )
    elif used > REDIS_MEMORY_SHARE * limit:
        yield Check(
            "memory",
            False,
            f"Redis uses {_mb(used)} of its {_mb(limit)}: at the limit it refuses "
            "messages; raise wxrelay_redis_maxmemory, or see what fills it (make status)",
        )
    else:
        yield Check("memory", True, f"Redis uses {_mb(used)} of {_mb(limit)}")
    yield _failures(failures)


def _failures(found: list[problems.Problem]) -> Check:
    if not found:
        return Check("bot", True, "no failures in the last hour")
    now = time.time()
    lines = [f"{len(found)} failures in the last hour:"]
    for group in problems.grouped(found)[:5]:
        latest = group.latest
        if latest.kind == problems.HANDLER:
            what = f"handler {latest.what} failed: {latest.detail}"
        else:
            code = int(latest.what) if latest.what.lstrip("-").isdigit() else None
            what = f"late replies not sent: {errcodes.explain(code, latest.detail) if code else latest.what}"
        lines.append(f"      {group.count} × {latest.account}: {what} (last {_ago(now - latest.at)})")
    return Check("bot", False, "\n".join(lines))


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"
