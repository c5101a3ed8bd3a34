"""Nothing leaks: after late replies through the fake WeChat API (tokens
fetched, expired and fetched again, a send refused), a wrong signature and a
replayed one, no secret is in any log of the run (relays, workers, nginx,
Redis, supervisord) nor in any file others can read; what nginx answers the
world tells nothing; and with WXRELAY_ALLOWED_SOURCES=wechat only the
addresses WeChat's getcallbackip lists get in, whatever header a client sends.

One private appliance for the module (`python -m appliance run` under
supervisor, as tests/test_faults.py), WeChat's window shortened to 1.5 s.
"""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chaos.appliance import APPID, TOKEN
from chaos.rehearsal import Rehearsal
from chaos.stage import stage
from simulator import WeChatSimulator
from simulator.messages import new_msg_id
from tests.services import require_appliance, wait_until

WINDOW = 1.5
STRANGER = "127.0.0.2"  # loopback too, but not on the list WeChat's API gives (127.0.0.1)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    require_appliance()
    extra = {"WXRELAY_ALLOWED_SOURCES": "wechat"}
    with stage(WINDOW, workdir=tmp_path_factory.mktemp("leaks"), extra=extra) as started:
        yield started


def simulator(rehearsal: Rehearsal, mode: str) -> WeChatSimulator:
    appliance = rehearsal.appliance
    return WeChatSimulator(appliance.url, TOKEN, APPID, appliance.aes_key, mode=mode, deadline=WINDOW)


def post(url: str, params: dict[str, str], body: bytes, source: str = "127.0.0.1", **headers: str) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=5, trust_env=False) as client:
        return client.post(url, params=params, content=body, headers=headers)


def listening_on(port: int) -> set[str]:
    """The addresses sockets listen on `port` at (from /proc/net/tcp and tcp6: an IPv6 one in hex)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(str(ipaddress.ip_address(bytes.fromhex(address)[::-1])) if len(address) == 8 else address)
    return found


def readable_by_others(path: Path, root: Path) -> bool:
    """Another local user can read `path`: it is o+r, and every folder from `root` down is o+x."""
    if not path.stat().st_mode & stat.S_IROTH:
        return False
    return all(folder.stat().st_mode & stat.S_IXOTH for folder in [root, *path.relative_to(root).parents[:-1]])


def test_no_secret_in_any_log_or_file_others_can_read(rehearsal: Rehearsal) -> None:
    api, appliance = rehearsal.api, rehearsal.appliance
    slow = rehearsal.slow(3 * WINDOW + 0.5)
    users = {mode: f"o_leak_{mode}_{new_msg_id()}" for mode in ("plain", "safe")}
    for mode, user in users.items():
        assert simulator(rehearsal, mode).say(slow, user=user).body == b"success"
    api.wait_for(lambda a: all(a.sends_to(user) for user in users.values()), timeout=60)
    # A token WeChat expired: the send is refused (42001), a new token fetched, the send made.
    api.expire_tokens()
    expired = f"o_leak_expired_{new_msg_id()}"
    simulator(rehearsal, "safe").say(slow, user=expired)
    api.wait_for(lambda a: a.sends_to(expired), timeout=60)
    # A send WeChat refuses for good.
    api.fail_next(45015)
    refused = f"o_leak_refused_{new_msg_id()}"
    simulator(rehearsal, "plain").say(slow, user=refused)
    wait_until(lambda: any(a.errcode == 45015 for a in api.send_attempts), 60, "the refused send")
    # A wrong signature, and a signature replayed with another body.
    params, body = simulator(rehearsal, "plain").build_request({"MsgType": "text", "Content": "x", "MsgId": "1"})
    assert post(appliance.url, {**params, "signature": "0" * 40}, body).status_code == 403
    assert post(appliance.url, params, body).status_code == 200
    assert post(appliance.url, params, body.replace(b"[x]", b"[other]")).status_code == 403
    assert api.token_requests >= 2 and len(api.issued_tokens) >= 2

    secrets = {
        "WECHAT_TOKEN": TOKEN,
        "WECHAT_AES_KEY": appliance.aes_key,
        "WECHAT_APPSECRET": appliance.secrets.appsecret,
        "the Redis password": appliance.secrets.redis_password,
        "the Redis admin password": appliance.secrets.redis_admin_password,
        **{f"access_token {n}": token for n, token in enumerate(api.issued_tokens)},
    }
    logs = sorted(appliance.layout.log_dir.rglob("*"))
    assert {"supervisord.log", "redis.log", "nginx-access.log", "nginx-error.log"} <= {p.name for p in logs}
    assert sum(1 for p in logs if p.name.startswith(("relay-", "worker-"))) >= 4
    root = appliance.workdir
    files = [path for path in sorted(root.rglob("*")) if path.is_file()]
    leaks, exposed, holders = [], [], []
    for path in files:
        data = path.read_bytes()
        for name, secret in secrets.items():
            if secret.encode() in data:
                holders.append(path)
                if appliance.layout.log_dir in path.parents:
                    leaks.append(f"{name} in {path.relative_to(root)}")
                if readable_by_others(path, root):
                    exposed.append(f"{name} in {path.relative_to(root)}, which others can read")
    assert not leaks, "\n".join(leaks)
    assert not exposed, "\n".join(exposed)
    # The secrets are where they must be, and only there: the env files (0600) and Redis's data.
    assert {p.name for p in holders} <= {"chaos.env", "wxrelay.env"} | {p.name for p in holders if "redis" in str(p)}
    assert (root / "chaos.env") in holders and stat.S_IMODE(appliance.layout.env_file.stat().st_mode) == 0o600
    assert "#" in (conf := appliance.layout.redis_conf.read_text()) and appliance.secrets.redis_password not in conf


def test_what_nginx_answers_the_world_tells_nothing(rehearsal: Rehearsal) -> None:
    appliance = rehearsal.appliance
    base = appliance.url.removesuffix("/wechat")
    health = httpx.get(f"{base}/healthz", trust_env=False)
    assert (health.status_code, health.text) == (200, "ok")
    # The details are for the operator, on the relay ports.
    assert appliance.health(appliance.relay_ports[0])["status"] == "ok"
    assert httpx.get(f"{base}/metrics", trust_env=False).status_code == 404
    # So are each worker's: on its own port, on loopback alone.
    for port in appliance.worker_metrics_ports:
        assert "wxrelay_handler_outcomes_total" in httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
        assert listening_on(port) == {"127.0.0.1"}
    for response in (health, httpx.get(f"{base}/nowhere", trust_env=False)):
        assert response.headers["server"] == "nginx", response.headers
    assert "nginx/" not in httpx.get(f"{base}/nowhere", trust_env=False).text
    params, _ = simulator(rehearsal, "plain").build_request({"MsgType": "text", "Content": "v"})
    echo = httpx.get(appliance.url, params={**params, "echostr": "<script>x</script>"}, trust_env=False)
    assert echo.text == "<script>x</script>" and echo.headers["x-content-type-options"] == "nosniff"
    assert echo.headers["content-type"].startswith("text/plain")


def test_only_the_addresses_wechat_lists_get_in_through_nginx(rehearsal: Rehearsal) -> None:
    api, appliance = rehearsal.api, rehearsal.appliance
    assert api.callback_ip_requests >= 1
    before = sum(
        appliance.metric(port, "wxrelay_rejected_total", reason="source_address") for port in appliance.relay_ports
    )
    for headers in ({}, {"X-Real-IP": "127.0.0.1", "X-Forwarded-For": "127.0.0.1"}):
        params, body = simulator(rehearsal, "safe").build_request({"MsgType": "text", "Content": "let me in"})
        assert post(appliance.url, params, body, source=STRANGER, **headers).status_code == 403, headers
    params, body = simulator(rehearsal, "safe").build_request({"MsgType": "text", "Content": "from WeChat"})
    assert post(appliance.url, params, body).status_code == 200
    after = sum(
        appliance.metric(port, "wxrelay_rejected_total", reason="source_address") for port in appliance.relay_ports
    )
    assert after == before + 2
