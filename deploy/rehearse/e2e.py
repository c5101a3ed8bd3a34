"""End-to-end checks of a deployed appliance, from outside it, through nginx.

Used by the rehearsal (deploy/rehearse/rehearse.py) against its container;
`shell` runs a command on the host as the deploy user (with sudo), for what
only the host itself can see: each relay's /metrics and /healthz, supervisor,
systemd, Redis on loopback, Prometheus's API (the monitoring role), and the
hardening of the files and processes.
Secrets reach the host on the command's standard input, never in its command
line (which ps shows), and no failure message prints one.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode

import httpx
import yaml

from simulator import WeChatSimulator
from simulator.messages import text_message, to_xml
from wechat.crypto import MessageCrypto, encrypt
from wechat.exceptions import DecryptError, SignatureError, XMLError
from wechat.parser import parse_xml
from wechat.signature import make_signature

# What the example bot (appserver/example_bot.py) answers.
ECHO = re.compile(r"^Hi (?P<user>\S+), you said: (?P<text>.*)$")
SERVICES = ("nginx", "redis-server", "supervisor", "nftables", "ssh")
RELAY_PORT = 8001
REDIS_PORT = 6379
# Where the roles put things (deploy/ansible/roles/wxrelay/defaults/main.yml).
SERVICE_USER = "wxrelay"
REDIS_USER = "wxrelay"
ENV_FILE = "/etc/wxrelay/wxrelay.env"
ACCOUNTS_FILE = "/etc/wxrelay/accounts.toml"
APP_DIR = "/opt/wxrelay"
REDIS_CONF = "/etc/redis/redis.conf"
SUPERVISOR_SOCKET = "/var/run/supervisor.sock"
# A relay just restarted takes a moment to resubscribe and see the workers.
HEALTHY_WITHIN = 15.0
# The monitoring role (roles/monitoring/defaults/main.yml): Prometheus and the
# exporters, on loopback; Prometheus scrapes every 15 s.
PROMETHEUS_PORT = 9090
MONITORING_PORTS = (PROMETHEUS_PORT, 9100, 9121)
MONITORING_SERVICES = ("prometheus", "prometheus-node-exporter", "prometheus-redis-exporter")
REDIS_EXPORTER_ENV = "/etc/default/prometheus-redis-exporter"
SCRAPED_WITHIN = 60.0
RULES = Path(__file__).resolve().parents[1] / "monitoring/wxrelay-rules.yml"


@dataclass(frozen=True)
class Account:
    """An account of the test inventory's wxrelay_accounts (tests/deploy), its
    secrets the vault's vault_wxrelay_<name>_* variables."""

    name: str
    mode: str  # the one mode it accepts: plain or safe
    kind: str = "official"
    agentid: int = 0


# As in tests/deploy/inventory/group_vars/all/vars.yml.
OFFICIAL_ACCOUNTS = (Account("shop", "safe"), Account("news", "plain"))
WECOM_APP = Account("staff", "safe", kind="wecom", agentid=1000002)

T = TypeVar("T")


class CheckFailed(Exception):
    pass


@dataclass
class Target:
    url: str  # http://address
    https: str  # https://address
    secrets: dict[str, str]
    certificate: Path
    shell: Callable[..., subprocess.CompletedProcess]
    address: str
    source: str  # where the checks come from: the one address wxrelay_allowed_sources lets in
    relays: int = 3
    standby: int = 1  # of the relays, the last ones stand by (nginx's backup servers)
    workers: int = 2

    @property
    def serving(self) -> list[int]:
        """The ports of the relays nginx passes requests to while they are up."""
        return [RELAY_PORT + n for n in range(self.relays - self.standby)]

    def secret(self, account: Account, field: str) -> str:
        return self.secrets[f"vault_wxrelay_{account.name}_{field}"]

    def account_simulator(self, account: Account, *, url: str | None = None) -> WeChatSimulator:
        """WeChat as it calls `account` (on its URL unless told another)."""
        return WeChatSimulator(
            url or f"{self.url}/wechat/{account.name}",
            self.secret(account, "token"),
            appid=self.secret(account, "appid"),
            aes_key=self.secrets.get(f"vault_wxrelay_{account.name}_aes_key"),
            mode=account.mode,
            deadline=5.0,
            deliveries=3,
            account=f"gh_{account.name}",
        )

    def simulator(self, mode: str) -> WeChatSimulator:
        return WeChatSimulator(
            f"{self.url}/wechat",
            self.secrets["vault_wxrelay_wechat_token"],
            appid=self.secrets["vault_wxrelay_wechat_appid"],
            aes_key=self.secrets["vault_wxrelay_wechat_aes_key"],
            mode=mode,
            deadline=5.0,
            deliveries=3,
        )


def read_vault(vault: Path, password_file: Path) -> dict[str, str]:
    tool = Path(sys.prefix) / "bin" / "ansible-vault"
    out = subprocess.run(
        [str(tool), "view", "--vault-password-file", str(password_file), str(vault)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return yaml.safe_load(out)


def wait_for(probe: Callable[[], T], done: Callable[[T], bool], within: float, interval: float = 0.5) -> T:
    """probe() until done(its value) or the deadline passes; its last value."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def check(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def passed(message: str) -> None:
    print(f"  ✓ {message}", flush=True)


def relay_counts(target: Target, ports: list[int] | None = None) -> dict[int, float]:
    """Requests each relay (or each of `ports`) has handled (valid messages and URL verifications)."""
    ports = ports if ports is not None else [RELAY_PORT + n for n in range(target.relays)]
    script = (
        "import json, urllib.request\n"
        "out = {}\n"
        f"for port in {ports!r}:\n"
        "    text = urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=5).read().decode()\n"
        "    out[port] = sum(float(l.rsplit(' ', 1)[1]) for l in text.splitlines()\n"
        "                    if l.startswith(('wxrelay_messages_total', 'wxrelay_url_verifications_total')))\n"
        "print(json.dumps(out))\n"
    )
    result = target.shell(f"python3 -c {shell_quote(script)}")
    return {int(port): value for port, value in json.loads(result.stdout).items()}


def shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def say_and_check(target: Target, mode: str, text: str, user: str = "o_rehearsal_user") -> float:
    result = target.simulator(mode).say(text, user=user)
    check(result.answered, f"{mode}: no delivery of {text!r} was answered ({result.attempts})")
    match = ECHO.match(result.text or "")
    check(match and match["text"] == text, f"{mode}: unexpected reply {result.text!r} to {text!r}")
    return result.elapsed


def verification_params(target: Target, echostr: str) -> dict[str, str]:
    """A URL verification (GET) as WeChat signs it."""
    token = target.secrets["vault_wxrelay_wechat_token"]
    timestamp, nonce = str(int(time.time())), "271828"
    return {
        "signature": make_signature(token, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
        "echostr": echostr,
    }


def check_url_verification(target: Target) -> None:
    echostr = "rehearsal-echo-3141"
    response = httpx.get(f"{target.url}/wechat", params=verification_params(target, echostr), timeout=5)
    check(
        response.status_code == 200 and response.text == echostr,
        f"URL verification: HTTP {response.status_code} {response.text[:100]!r}",
    )
    passed("URL verification (GET with echostr) answered through nginx")
    # The echo is text the caller chose: no browser may take it for HTML.
    nosniff = response.headers.get("x-content-type-options")
    check(nosniff == "nosniff", f"URL verification echo: X-Content-Type-Options {nosniff!r}, not 'nosniff'")
    passed("the echo carries X-Content-Type-Options: nosniff")


def check_allowed_sources(target: Target) -> None:
    """The host itself is not an allowed source: through nginx, a well-signed
    request from it is refused, even claiming the allowed address in X-Real-IP
    (nginx sets that header itself)."""
    url = "http://127.0.0.1/wechat?" + urlencode(verification_params(target, "rehearsal-echo-2718"))
    script = (
        "import urllib.error, urllib.request\n"
        f"request = urllib.request.Request({url!r}, headers={{'X-Real-IP': {target.source!r}}})\n"
        "try:\n"
        "    print(urllib.request.urlopen(request, timeout=5).status)\n"
        "except urllib.error.HTTPError as error:\n"
        "    print(error.code)\n"
    )
    status = target.shell(f"python3 -c {shell_quote(script)}").stdout.strip()
    check(status == "403", f"a signed request from the host itself, X-Real-IP {target.source}: HTTP {status}, not 403")
    passed(f"only {target.source} gets in (wxrelay_allowed_sources): the host itself is refused, X-Real-IP or not")


def check_modes(target: Target) -> None:
    for mode in ("plain", "compat", "safe"):
        elapsed = say_and_check(target, mode, f"hello in {mode} mode")
        passed(f"{mode} mode: signed message answered by a worker in {elapsed:.3f} s")


def check_bad_signature(target: Target) -> None:
    params, body = target.simulator("safe").build_request(
        {
            "ToUserName": "gh_rehearsal",
            "FromUserName": "o_intruder",
            "CreateTime": int(time.time()),
            "MsgType": "text",
            "Content": "forged",
            "MsgId": 1,
        }
    )
    for name in ("signature", "msg_signature"):
        forged = {**params, name: "0" * 40}
        response = httpx.post(f"{target.url}/wechat", params=forged, content=body, timeout=5)
        check(response.status_code == 403, f"a bad {name} got HTTP {response.status_code}, not 403")
    passed("bad signature and bad msg_signature refused (403)")


def check_chunked_bodies(target: Target) -> None:
    """A body in small chunks outgrows nginx's memory buffer long before the limit: its workers
    write it to a temp file, which they must be able to (a 500 otherwise, where 413 or 200 is due)."""
    params, body = target.simulator("plain").build_request(
        {"FromUserName": "o_chunks", "CreateTime": int(time.time()), "MsgType": "text", "Content": "in chunks"}
    )

    def chunks(data: bytes, size: int) -> Iterator[bytes]:
        return (data[at : at + size] for at in range(0, len(data), size))

    url = f"{target.url}/wechat"
    answer = httpx.post(url, params=params, content=chunks(body, 4), timeout=10)
    check(answer.status_code == 200, f"a message in 4-byte chunks got HTTP {answer.status_code}, not 200")
    oversize = b"<xml>" + b"x" * 70_000 + b"</xml>"
    answer = httpx.post(url, params=params, content=chunks(oversize, 16), timeout=10)
    check(answer.status_code == 413, f"an oversize body in 16-byte chunks got HTTP {answer.status_code}, not 413")
    passed("bodies in small chunks: a message answered (200), an oversize one refused (413)")


def check_accounts(target: Target) -> None:
    """Each official account of the accounts file on its own URL, with its own keys and queue."""
    for account in OFFICIAL_ACCOUNTS:
        text = f"hello {account.name}"
        result = target.account_simulator(account).say(text, user=f"o_{account.name}_user")
        check(result.answered, f"/wechat/{account.name}: no delivery of {text!r} was answered ({result.attempts})")
        match = ECHO.match(result.text or "")
        check(match and match["text"] == text, f"/wechat/{account.name}: unexpected reply {result.text!r}")
        check(
            result.decrypted == (account.mode != "plain"),
            f"/wechat/{account.name}: the reply was {'not ' if not result.decrypted else ''}encrypted",
        )
        passed(f"/wechat/{account.name} ({account.mode} mode): answered by the bot in {result.elapsed:.3f} s")


def check_accounts_keep_to_their_keys(target: Target) -> None:
    """A request signed with one account's token is refused on another's URL, and an unknown account is not found."""
    shop, news = OFFICIAL_ACCOUNTS
    wrong = (
        (shop, f"{target.url}/wechat/{news.name}"),
        (news, f"{target.url}/wechat/{shop.name}"),
        (news, f"{target.url}/wechat"),
        (shop, f"{target.url}/wechat/{WECOM_APP.name}"),
    )
    for signer, url in wrong:
        params, body = target.account_simulator(signer).build_request(
            text_message("not yours", user="o_intruder", account=f"gh_{signer.name}")
        )
        response = httpx.post(url, params=params, content=body, timeout=5)
        check(
            response.status_code == 403,
            f"a message signed with {signer.name}'s token on {url}: HTTP {response.status_code}, not 403",
        )
    passed("a message signed with another account's token is refused (403): shop↔news, news on /wechat, shop on staff")
    params, body = target.account_simulator(shop).build_request(text_message("anyone?", user="o_intruder"))
    for method, url in (("POST", f"{target.url}/wechat/nosuch"), ("GET", f"{target.url}/wechat/nosuch")):
        response = httpx.request(method, url, params=params, content=body if method == "POST" else None, timeout=5)
        check(response.status_code == 404, f"{method} {url}: HTTP {response.status_code}, not 404")
    passed("an unknown account (/wechat/nosuch) is not found (404), GET and POST")


def wecom_crypto(target: Target) -> MessageCrypto:
    return MessageCrypto(
        target.secret(WECOM_APP, "token"), target.secret(WECOM_APP, "aes_key"), target.secret(WECOM_APP, "corpid")
    )


def wecom_signed(crypto: MessageCrypto, sealed: str) -> dict[str, str]:
    """The query of a WeCom callback: msg_signature over token, timestamp, nonce and the sealed text."""
    timestamp, nonce = str(int(time.time())), str(int(time.time() * 1000) % 10**9)
    return {
        "msg_signature": make_signature(crypto.token, timestamp, nonce, sealed),
        "timestamp": timestamp,
        "nonce": nonce,
    }


def check_wecom_message(target: Target) -> None:
    """A message to the WeCom app, answered by the bot in an envelope sealed and signed with the app's keys."""
    crypto, corpid, url = wecom_crypto(target), target.secret(WECOM_APP, "corpid"), f"{target.url}/wechat/staff"
    text = "hello staff"
    message = text_message(text, user="rehearsal.staff", account=corpid, AgentID=WECOM_APP.agentid)
    sealed = encrypt(crypto.key, to_xml(message), corpid)
    body = to_xml({"ToUserName": corpid, "AgentID": WECOM_APP.agentid, "Encrypt": sealed}).encode()
    params = wecom_signed(crypto, sealed)
    started = time.monotonic()
    for _delivery in range(3):  # as WeCom retries: the same request, a 5 s deadline each
        try:
            response = httpx.post(url, params=params, content=body, headers={"Content-Type": "text/xml"}, timeout=5)
        except httpx.TimeoutException:
            continue
        if response.status_code == 200:
            break
    else:
        raise CheckFailed(f"WeCom: no delivery of {text!r} was answered")
    elapsed = time.monotonic() - started
    try:
        envelope = parse_xml(response.content)
        plaintext, _ = crypto.decrypt_message(
            envelope["Encrypt"], envelope.get("MsgSignature"), envelope.get("TimeStamp"), envelope.get("Nonce")
        )
        reply = parse_xml(plaintext)
    except (KeyError, XMLError, SignatureError, DecryptError) as exc:
        raise CheckFailed(f"WeCom: the reply is not an envelope sealed and signed by the app's keys: {exc!r}") from None
    match = ECHO.match(str(reply.get("Content", "")))
    check(match and match["text"] == text, f"WeCom: unexpected reply {reply.get('Content')!r}")
    check(reply.get("ToUserName") == "rehearsal.staff", f"WeCom: the reply goes to {reply.get('ToUserName')!r}")
    passed(f"/wechat/staff (WeCom): a message answered by the bot, sealed and signed, in {elapsed:.3f} s")


def check_wecom_url_verification(target: Target) -> None:
    """The WeCom app's URL verification: an encrypted echostr, signed by msg_signature, answered decrypted."""
    crypto, corpid, url = wecom_crypto(target), target.secret(WECOM_APP, "corpid"), f"{target.url}/wechat/staff"
    echo = "rehearsal-wecom-echo-1618"
    sealed = encrypt(crypto.key, echo, corpid)
    response = httpx.get(url, params={**wecom_signed(crypto, sealed), "echostr": sealed}, timeout=5)
    check(
        response.status_code == 200 and response.text == echo,
        f"WeCom URL verification: HTTP {response.status_code} {response.text[:100]!r}, not the decrypted echostr",
    )
    forged = {**wecom_signed(crypto, sealed), "echostr": sealed, "msg_signature": "0" * 40}
    response = httpx.get(url, params=forged, timeout=5)
    check(response.status_code == 403, f"WeCom URL verification, bad msg_signature: HTTP {response.status_code}")
    passed("/wechat/staff (WeCom): URL verification answers the decrypted echostr; a bad msg_signature gets 403")


def check_spread(target: Target) -> None:
    before = relay_counts(target)
    serving = target.serving
    for n in range(4 * len(serving)):
        say_and_check(target, "plain", f"spread {n}", user=f"o_spread_{n}")
    after = relay_counts(target)
    deltas = {port: after[port] - before.get(port, 0) for port in after}
    check(
        len(deltas) == target.relays and all((deltas[port] > 0) == (port in serving) for port in deltas),
        f"requests did not reach every serving relay, or reached one standing by: {deltas}",
    )
    passed(f"{4 * len(serving)} messages spread over the {len(serving)} serving relays, none to the standby: {deltas}")


def check_relay_down(target: Target) -> None:
    """Every serving relay stopped: the standby answers at once."""
    victims = [f"wxrelay-relay:relay-{port}" for port in target.serving]
    standing_by = [RELAY_PORT + n for n in range(target.relays) if RELAY_PORT + n not in target.serving]
    before = relay_counts(target, standing_by)
    target.shell(f"sudo supervisorctl stop {' '.join(victims)}")
    try:
        for n in range(4):
            elapsed = say_and_check(target, "safe", f"serving relays down {n}", user=f"o_down_{n}")
            check(elapsed < 4.5, f"with the serving relays down a message took {elapsed:.2f} s")
        after = relay_counts(target, standing_by)
        standby = sum(after[port] - before[port] for port in standing_by)
        check(standby >= 4, f"the standby relays took {standby} of 4 requests")
        passed(f"with {', '.join(victims)} stopped, 4 messages answered at once by the standby")
    finally:
        target.shell(f"sudo supervisorctl start {' '.join(victims)}")


def check_processes(target: Target) -> None:
    status = target.shell("sudo supervisorctl status", check=False).stdout
    programs = [line for line in status.splitlines() if line.startswith("wxrelay-")]
    check(
        len(programs) == target.relays + target.workers and all(" RUNNING " in p for p in programs),
        f"supervisor:\n{status}",
    )
    passed(f"supervisor: {len(programs)} programs RUNNING ({target.relays} relays, {target.workers} workers)")
    for service in SERVICES:
        state = target.shell(f"systemctl is-active {service}", check=False).stdout.strip()
        check(state == "active", f"{service} is {state}")
    failed = target.shell("systemctl list-units --failed --plain --no-legend", check=False).stdout.strip()
    check(not failed, f"failed units:\n{failed}")
    passed(f"systemd: {', '.join(SERVICES)} active, no failed unit")
    users = target.shell("ps -eo user=,args=", check=False).stdout.splitlines()
    ours = [line.split(None, 1) for line in users if f" {APP_DIR}/venv/" in line]
    check(
        len(ours) >= target.relays + target.workers and all(user == SERVICE_USER for user, _ in ours),
        "relay and worker processes not all run as " + SERVICE_USER + ":\n" + "\n".join(" ".join(o) for o in ours),
    )
    passed(f"all {len(ours)} relay and worker processes run as {SERVICE_USER}")
    # Thousands of slow conversations held open: room for them in nginx and in every process.
    nginx = target.shell("sudo nginx -T 2>/dev/null | grep -E 'worker_(connections|rlimit_nofile)'", check=False).stdout
    check("worker_connections 8192;" in nginx and "worker_rlimit_nofile 16384;" in nginx, f"nginx:\n{nginx}")
    pids = target.shell(f"pgrep -u {SERVICE_USER} -f {APP_DIR}/venv/", check=False).stdout.split()
    limits = [
        target.shell(f"sudo grep 'Max open files' /proc/{pid}/limits", check=False).stdout.split() for pid in pids
    ]
    # Raised to 65536, or as far as the host's hard limit lets (a container inherits its host's).
    check(
        pids and all(len(limit) > 4 and int(limit[3]) >= min(65536, int(limit[4])) for limit in limits),
        f"open files: {limits}",
    )
    passed(f"nginx holds 8192 connections; {len(pids)} relay and worker processes raised their open-files limit")


def relay_health(target: Target) -> dict[str, object]:
    """The detailed /healthz of the first relay, from the host itself (loopback)."""
    script = (
        "import urllib.error, urllib.request\n"
        "try:\n"
        f"    print(urllib.request.urlopen('http://127.0.0.1:{RELAY_PORT}/healthz', timeout=5).read().decode())\n"
        "except urllib.error.HTTPError as error:\n"
        "    print(error.read().decode())\n"
    )
    return json.loads(target.shell(f"python3 -c {shell_quote(script)}").stdout)


def check_health(target: Target) -> None:
    response = wait_for(
        lambda: httpx.get(f"{target.url}/healthz", timeout=5), lambda r: r.status_code == 200, HEALTHY_WITHIN
    )
    kind = response.headers.get("content-type", "")
    check(
        response.status_code == 200 and response.text == "ok" and kind.startswith("text/plain"),
        f"/healthz through nginx: HTTP {response.status_code} {kind} {response.text[:200]!r}, not a bare ok",
    )
    passed("/healthz through nginx: exactly 'ok' (text/plain), no details")
    health = wait_for(
        lambda: relay_health(target),
        lambda h: h.get("status") == "ok" and h.get("workers") == target.workers,
        HEALTHY_WITHIN,
    )
    check(health.get("status") == "ok", f"relay /healthz: {health}")
    check(health.get("workers") == target.workers, f"relay /healthz: not {target.workers} workers: {health}")
    passed(f"/healthz on relay port {RELAY_PORT} (loopback): {health}")


def check_server_header(target: Target) -> None:
    """nginx names itself and no version, on proxied answers and its own errors alike."""
    for path, status in (("/livez", 200), ("/metrics", 404), ("/no-such-page", 404)):
        response = httpx.get(f"{target.url}{path}", timeout=5)
        server = response.headers.get("server")
        check(response.status_code == status, f"{path} through nginx: HTTP {response.status_code}, not {status}")
        check(server == "nginx", f"{path} through nginx: Server {server!r}, not 'nginx'")
    passed("Server header exactly 'nginx' (no version) on /livez and on 404s")


def redis_cli(target: Target, *args: str, user: str | None = None, secret: str | None = None) -> str:
    """redis-cli on the host, its replies and errors; the password (the vault
    variable named `secret`) goes in on stdin, into REDISCLI_AUTH."""
    command = f"redis-cli -h 127.0.0.1 -p {REDIS_PORT} " + (f"--user {user} " if user else "")
    command += " ".join(shell_quote(arg) for arg in args)
    if secret is None:
        result = target.shell(command, check=False)
    else:
        result = target.shell(
            f"read -r REDISCLI_AUTH && export REDISCLI_AUTH && {command}",
            check=False,
            input=target.secrets[secret] + "\n",
        )
    return (result.stdout + result.stderr).strip()


def check_redis(target: Target) -> None:
    anonymous = redis_cli(target, "ping")
    check("NOAUTH" in anonymous and "PONG" not in anonymous, f"Redis answered an unauthenticated client: {anonymous!r}")
    passed("Redis refuses an unauthenticated client (NOAUTH)")
    # AUTH <password> signs in as the default user, which is off.
    legacy = redis_cli(target, "ping", secret="vault_wxrelay_redis_password")
    check("WRONGPASS" in legacy and "PONG" not in legacy, f"Redis took AUTH <password> (default user): {legacy!r}")
    passed("Redis refuses the legacy AUTH <password> (the default user is off)")

    def app(*args: str) -> str:
        return redis_cli(target, *args, user=REDIS_USER, secret="vault_wxrelay_redis_password")

    probe = "wxrelay:rehearsal:acl-probe"
    pong = app("ping")
    check(pong == "PONG", f"Redis as {REDIS_USER}: PING answered {pong!r}")
    stored = (app("set", probe, "42"), app("get", probe), app("del", probe))
    check(stored == ("OK", "42", "1"), f"Redis as {REDIS_USER}: SET, GET, DEL answered {stored}")
    info = app("info", "memory")
    check("used_memory:" in info, f"Redis as {REDIS_USER}: INFO memory answered {info[:200]!r}")
    for command in (("config", "get", "maxmemory-policy"), ("flushall",), ("keys", "*")):
        reply = app(*command)
        check(reply.startswith("NOPERM"), f"Redis as {REDIS_USER}: {' '.join(command)} answered {reply[:200]!r}")
    # DEBUG is off for every user anyway (enable-debug-command): the ACL's own
    # verdict comes from ACL DRYRUN, the admin's.
    debug = app("debug", "sleep", "0")
    check(debug.startswith(("NOPERM", "ERR")), f"Redis as {REDIS_USER}: DEBUG answered {debug[:200]!r}")
    passed(f"Redis as {REDIS_USER}: PING, SET/GET, INFO; CONFIG GET, FLUSHALL, KEYS refused (NOPERM), DEBUG refused")

    def admin(*args: str) -> str:
        return redis_cli(target, *args, user="admin", secret="vault_wxrelay_redis_admin_password")

    dryrun = admin("acl", "dryrun", REDIS_USER, "debug", "sleep", "0")
    check("no permissions" in dryrun, f"ACL DRYRUN {REDIS_USER} DEBUG: {dryrun[:200]!r}")
    policy = admin("config", "get", "maxmemory-policy")
    check(policy.split() == ["maxmemory-policy", "noeviction"], f"maxmemory-policy: {policy!r}")
    passed(f"Redis as admin: the ACL refuses DEBUG to {REDIS_USER} (ACL DRYRUN); maxmemory-policy noeviction")

    listening = target.shell("sudo ss -Hltnp", check=False).stdout.splitlines()
    addresses = [line.split()[3] for line in listening if '"redis-server"' in line]
    check(
        addresses and all(a.rsplit(":", 1)[0] in ("127.0.0.1", "[::1]") for a in addresses),
        f"Redis listens on {addresses}, not on loopback only",
    )
    passed(f"Redis listens on loopback only: {', '.join(addresses)}")


def check_host_files(target: Target) -> None:
    """The service reads its settings and runs its code, and can change neither."""

    def stat(path: str) -> str:
        return target.shell(f"sudo stat -c '%U:%G %a' {shell_quote(path)}", check=False).stdout.strip()

    def service_can(test: str, path: str) -> bool:
        argv = f"sudo -u {SERVICE_USER} test -{test} {shell_quote(path)}"
        return target.shell(argv, check=False).returncode == 0

    folder = ENV_FILE.rsplit("/", 1)[0]
    check(stat(ENV_FILE) == f"root:{SERVICE_USER} 640", f"{ENV_FILE}: {stat(ENV_FILE)}, not root:{SERVICE_USER} 640")
    check(stat(folder) == f"root:{SERVICE_USER} 750", f"{folder}: {stat(folder)}, not root:{SERVICE_USER} 750")
    check(service_can("r", ENV_FILE), f"{SERVICE_USER} cannot read {ENV_FILE}")
    check(not service_can("w", ENV_FILE) and not service_can("w", folder), f"{SERVICE_USER} can change {ENV_FILE}")
    env = target.shell(f"sudo cat {ENV_FILE}").stdout
    check(
        f'WXRELAY_REDIS_URL="redis://{REDIS_USER}:' in env,
        f"{ENV_FILE}: WXRELAY_REDIS_URL does not name the Redis user {REDIS_USER}",
    )
    admin = target.secrets["vault_wxrelay_redis_admin_password"]
    check(
        "REDIS_ADMIN" not in env and admin not in env and hashlib.sha256(admin.encode()).hexdigest() not in env,
        f"{ENV_FILE} holds the Redis admin password (vault_wxrelay_redis_admin_password) or its hash",
    )
    passed(
        f"{ENV_FILE} root:{SERVICE_USER} 0640 in a 0750 folder: {SERVICE_USER} reads it, cannot change it; "
        "the Redis URL names its user, no admin password"
    )
    check(
        stat(ACCOUNTS_FILE) == f"root:{SERVICE_USER} 640",
        f"{ACCOUNTS_FILE}: {stat(ACCOUNTS_FILE)}, not root:{SERVICE_USER} 640",
    )
    check(service_can("r", ACCOUNTS_FILE), f"{SERVICE_USER} cannot read {ACCOUNTS_FILE}")
    check(not service_can("w", ACCOUNTS_FILE), f"{SERVICE_USER} can change {ACCOUNTS_FILE}")
    check(f'WXRELAY_ACCOUNTS_FILE="{ACCOUNTS_FILE}"' in env, f"{ENV_FILE} does not name {ACCOUNTS_FILE}")
    passed(
        f"{ACCOUNTS_FILE} root:{SERVICE_USER} 0640: {SERVICE_USER} reads it, cannot change it, named by the env file"
    )

    loose = target.shell(
        f"sudo find {APP_DIR} \\( ! -user root -o ! -type l -perm /022 \\) -print | head -5", check=False
    ).stdout.strip()
    check(not loose, f"{APP_DIR} has files not root's or writable by others:\n{loose}")
    site = target.shell(f"ls -d {APP_DIR}/venv/lib/python3*/site-packages", check=False).stdout.strip()
    paths = [APP_DIR, f"{APP_DIR}/venv", f"{APP_DIR}/venv/bin", f"{APP_DIR}/venv/bin/python", f"{APP_DIR}/bot", site]
    check(site and all(service_can("e", path) for path in paths), f"missing in {APP_DIR}: {paths}")
    writable = [path for path in paths if service_can("w", path)]
    check(not writable, f"{SERVICE_USER} can write {writable}")
    passed(
        f"{APP_DIR} all root's, nothing group- or world-writable; {SERVICE_USER} cannot write the venv or its python"
    )

    mode = stat(REDIS_CONF)
    check(mode.endswith("0") and mode.split()[0].endswith(":redis"), f"{REDIS_CONF}: {mode}, readable by others")
    conf = target.shell(f"sudo cat {REDIS_CONF}").stdout
    for name in ("vault_wxrelay_redis_password", "vault_wxrelay_redis_admin_password"):
        check(target.secrets[name] not in conf, f"{REDIS_CONF} holds {name} in plaintext")
    users = [line for line in conf.splitlines() if line.startswith("user ")]
    digest = hashlib.sha256(target.secrets["vault_wxrelay_redis_password"].encode()).hexdigest()
    check(
        "requirepass" not in conf
        and all(">" not in line for line in users)
        and f"user {REDIS_USER} on #{digest} " in conf,
        f"{REDIS_CONF}: its users are not passworded by hash only:\n" + "\n".join(u[:40] for u in users),
    )
    passed(f"{REDIS_CONF} {mode}: not world-readable, passwords as SHA-256 only (#<hash>), no requirepass")

    socket_mode = target.shell(f"sudo stat -L -c '%U %a' {SUPERVISOR_SOCKET}", check=False).stdout.strip()
    check(socket_mode == "root 700", f"{SUPERVISOR_SOCKET}: {socket_mode}, not root 700")
    control = target.shell(f"sudo -u {SERVICE_USER} supervisorctl status", check=False)
    check(
        control.returncode != 0 and "RUNNING" not in control.stdout,
        f"{SERVICE_USER} can use supervisorctl:\n{control.stdout}",
    )
    passed(f"supervisor's socket root 0700: supervisorctl as {SERVICE_USER} fails ({control.stdout.strip()[:80]})")


def check_closed_from_outside(target: Target) -> None:
    for port in (6379, RELAY_PORT):
        try:
            with socket.create_connection((target.address, port), timeout=2):
                raise CheckFailed(f"port {port} of the host is reachable from outside")
        except OSError:
            pass
    response = httpx.get(f"{target.url}/metrics", timeout=5)
    check(response.status_code == 404, f"/metrics through nginx: HTTP {response.status_code}")
    too_big = httpx.post(f"{target.url}/wechat", content=b"x" * 200_000, timeout=5)
    check(too_big.status_code == 413, f"a 200 KB body got HTTP {too_big.status_code}, not 413")
    passed("Redis and relay ports closed from outside; /metrics not public; large bodies refused (413)")


def check_https(target: Target) -> None:
    context = ssl.create_default_context(cafile=str(target.certificate))
    context.check_hostname = False  # the test certificate names wxrelay.test, reached by address
    response = httpx.get(f"{target.https}/livez", verify=context, timeout=5)
    check(response.status_code == 200 and response.text == "ok", f"https /livez: {response.status_code}")
    check(response.headers.get("server") == "nginx", f"https /livez: Server {response.headers.get('server')!r}")
    passed("HTTPS with the provided certificate")


def prometheus(target: Target, path: str) -> dict:
    """An answer of Prometheus's HTTP API on the host (it listens on loopback only)."""
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/{path}"
    script = f"import urllib.request\nprint(urllib.request.urlopen({url!r}, timeout=5).read().decode())\n"
    return json.loads(target.shell(f"python3 -c {shell_quote(script)}").stdout)["data"]


def scrape_health(target: Target) -> dict[str, list[tuple[str, str, str]]]:
    """Prometheus's targets by job: (process or address, health, last error)."""
    jobs: dict[str, list[tuple[str, str, str]]] = {}
    for scraped in prometheus(target, "targets?state=active")["activeTargets"]:
        labels = scraped["labels"]
        name = labels.get("process", labels["instance"])
        jobs.setdefault(labels["job"], []).append((name, scraped["health"], scraped["lastError"]))
    return jobs


def check_monitoring(target: Target) -> None:
    """The monitoring role: Prometheus and the exporters run, on loopback only; the Redis exporter reads Redis as
    the appliance's Redis user, its password root's alone; every alert rule is loaded and none fails."""
    for service in MONITORING_SERVICES:
        state = target.shell(f"systemctl is-active {service}", check=False).stdout.strip()
        check(state == "active", f"{service} is {state}")
    listening = target.shell("sudo ss -Hltn", check=False).stdout.splitlines()
    addresses: dict[int, list[str]] = {port: [] for port in MONITORING_PORTS}
    for line in listening:
        host, port = line.split()[3].rsplit(":", 1)
        if int(port) in addresses:
            addresses[int(port)].append(host)
    check(
        all(hosts and all(host in ("127.0.0.1", "[::1]") for host in hosts) for hosts in addresses.values()),
        f"Prometheus and the exporters do not listen on loopback only: {addresses}",
    )
    for port in MONITORING_PORTS:
        try:
            with socket.create_connection((target.address, port), timeout=2):
                raise CheckFailed(f"port {port} of the host is reachable from outside")
        except OSError:
            pass
    mode = target.shell(f"sudo stat -c '%U:%G %a' {REDIS_EXPORTER_ENV}", check=False).stdout.strip()
    check(mode == "root:root 600", f"{REDIS_EXPORTER_ENV}: {mode}, not root:root 600")
    commands = target.shell("ps -eo args=", check=False).stdout
    check(target.secrets["vault_wxrelay_redis_password"] not in commands, "the Redis password is on a command line")
    passed(
        f"{', '.join(MONITORING_SERVICES)} active, on loopback only ({', '.join(map(str, MONITORING_PORTS))}) "
        f"and closed from outside; {REDIS_EXPORTER_ENV} root:root 0600, the password on no command line"
    )

    def redis_read() -> tuple[list, list]:
        up = prometheus(target, "query?query=redis_up")["result"]
        maxmemory = prometheus(target, "query?query=redis_memory_max_bytes")["result"]
        return [s["value"][1] for s in up], [s["value"][1] for s in maxmemory]

    expected = (["1"], [str(64 * 1024 * 1024)])
    seen = wait_for(redis_read, lambda read: read == expected, SCRAPED_WITHIN, interval=2)
    check(seen == expected, f"the Redis exporter does not read Redis: redis_up, redis_memory_max_bytes {seen}")
    rules = [rule for group in prometheus(target, "rules")["groups"] for rule in group["rules"]]
    shipped = sum(len(group["rules"]) for group in yaml.safe_load(RULES.read_text())["groups"])
    failing = [rule["name"] for rule in rules if rule["health"] == "err"]
    check(len(rules) == shipped and not failing, f"{len(rules)} rules loaded, not {shipped}; failing: {failing}")
    alerts = sorted(f"{a['labels']['alertname']} ({a['state']})" for a in prometheus(target, "alerts")["alerts"])
    passed(
        f"the Redis exporter reads Redis as {REDIS_USER} (maxmemory 64 MB); {len(rules)} alert rules loaded, "
        f"none failing; alerts now: {', '.join(alerts) or 'none'}"
    )


def check_prometheus_scrapes_everything(target: Target) -> None:
    """Every relay and worker of the host, the machine and Redis: each target Prometheus scrapes is up."""
    expected = {"wxrelay-relays": target.relays, "wxrelay-workers": target.workers, "node": 1, "redis": 1}

    def all_up(jobs: dict[str, list[tuple[str, str, str]]]) -> bool:
        return all(
            len(jobs.get(job, [])) == count and all(health == "up" for _, health, _ in jobs[job])
            for job, count in expected.items()
        )

    jobs = wait_for(lambda: scrape_health(target), all_up, SCRAPED_WITHIN, interval=2)
    for job, count in expected.items():
        found = jobs.get(job, [])
        check(
            len(found) == count and all(health == "up" for _, health, _ in found),
            f"Prometheus's {job} targets are not {count} up: {found}",
        )
    processes = sorted(name for job in ("wxrelay-relays", "wxrelay-workers") for name, _, _ in jobs[job])
    passed(f"Prometheus scrapes every relay and worker, all up: {', '.join(processes)}; node and redis up")


CHECKS = (
    check_url_verification,
    check_allowed_sources,
    check_modes,
    check_bad_signature,
    check_chunked_bodies,
    check_accounts,
    check_accounts_keep_to_their_keys,
    check_wecom_message,
    check_spread,
    check_relay_down,
    check_processes,
    check_health,
    check_server_header,
    check_redis,
    check_host_files,
    check_closed_from_outside,
    check_https,
    check_wecom_url_verification,
    check_monitoring,
    check_prometheus_scrapes_everything,
)


def run_checks(target: Target) -> None:
    for check_function in CHECKS:
        check_function(target)
