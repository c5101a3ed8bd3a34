"""End-to-end checks of a deployed appliance, from outside it, through nginx.

Used by the rehearsal (deploy/rehearse/rehearse.py) against its container;
`shell` runs a command on the host as the deploy user (with sudo), for what
only the host itself can see: each relay's /metrics, supervisor, systemd and
Redis on loopback.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from simulator import WeChatSimulator
from wechat.signature import make_signature

# What the example bot (appserver/example_bot.py) answers.
ECHO = re.compile(r"^Hi (?P<user>\S+), you said: (?P<text>.*)$")
SERVICES = ("nginx", "redis-server", "supervisor", "nftables", "ssh")
RELAY_PORT = 8001


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
    relays: int = 3
    workers: int = 2

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


def check(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def passed(message: str) -> None:
    print(f"  ✓ {message}", flush=True)


def relay_counts(target: Target) -> dict[int, float]:
    """Requests each relay has handled (valid messages and URL verifications)."""
    script = (
        "import json, urllib.request\n"
        "out = {}\n"
        f"for port in range({RELAY_PORT}, {RELAY_PORT + target.relays}):\n"
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


def check_url_verification(target: Target) -> None:
    token = target.secrets["vault_wxrelay_wechat_token"]
    timestamp, nonce, echostr = str(int(time.time())), "271828", "rehearsal-echo-3141"
    params = {
        "signature": make_signature(token, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
        "echostr": echostr,
    }
    response = httpx.get(f"{target.url}/wechat", params=params, timeout=5)
    check(
        response.status_code == 200 and response.text == echostr,
        f"URL verification: HTTP {response.status_code} {response.text[:100]!r}",
    )
    passed("URL verification (GET with echostr) answered through nginx")


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


def check_spread(target: Target) -> None:
    before = relay_counts(target)
    for n in range(4 * target.relays):
        say_and_check(target, "plain", f"spread {n}", user=f"o_spread_{n}")
    after = relay_counts(target)
    deltas = {port: after[port] - before.get(port, 0) for port in after}
    check(
        len(deltas) == target.relays and all(d > 0 for d in deltas.values()),
        f"requests did not reach every relay: {deltas}",
    )
    passed(f"{4 * target.relays} messages spread over all {target.relays} relays: {deltas}")


def check_relay_down(target: Target) -> None:
    victim = f"wxrelay-relay:relay-{RELAY_PORT}"
    target.shell(f"sudo supervisorctl stop {victim}")
    try:
        for n in range(2 * target.relays):
            elapsed = say_and_check(target, "safe", f"one relay down {n}", user=f"o_down_{n}")
            check(elapsed < 4.5, f"with one relay down a message took {elapsed:.2f} s")
        passed(f"with {victim} stopped, {2 * target.relays} messages still answered at once")
    finally:
        target.shell(f"sudo supervisorctl start {victim}")


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
    health = httpx.get(f"{target.url}/healthz", timeout=5).json()
    check(health.get("status") == "ok" and health.get("workers") == target.workers, f"/healthz: {health}")
    passed(f"/healthz through nginx: {health}")


def check_redis(target: Target) -> None:
    anonymous = target.shell("redis-cli -h 127.0.0.1 -p 6379 ping", check=False).stdout.strip()
    check("NOAUTH" in anonymous, f"Redis answered an unauthenticated client: {anonymous!r}")
    authenticated = target.shell(
        "REDISCLI_AUTH=\"$(sudo sed -n 's/^requirepass //p' /etc/redis/redis.conf)\" "
        "redis-cli -h 127.0.0.1 -p 6379 ping",
        check=False,
    ).stdout.strip()
    check(authenticated == "PONG", f"Redis with its password: {authenticated!r}")
    policy = target.shell(
        "REDISCLI_AUTH=\"$(sudo sed -n 's/^requirepass //p' /etc/redis/redis.conf)\" "
        "redis-cli --no-raw config get maxmemory-policy",
        check=False,
    ).stdout
    check("noeviction" in policy, f"maxmemory-policy: {policy!r}")
    passed("Redis refuses unauthenticated clients (NOAUTH), maxmemory-policy noeviction")


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
    passed("HTTPS with the provided certificate")


CHECKS = (
    check_url_verification,
    check_modes,
    check_bad_signature,
    check_spread,
    check_relay_down,
    check_processes,
    check_redis,
    check_closed_from_outside,
    check_https,
)


def run_checks(target: Target) -> None:
    for check_function in CHECKS:
        check_function(target)
