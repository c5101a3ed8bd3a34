"""Only WeChat gets in: a replayed plaintext signature, plaintext when
encryption is required, and a client address off the allow-list are refused
(403, counted by reason) and never dispatched."""

from __future__ import annotations

import sys

import httpx
import pytest

from common.settings import SETTINGS
from relay.seen_signatures import use_of
from simulator import WeChatSimulator
from simulator.messages import new_msg_id
from tests.conftest import AES_KEY, APPID, TOKEN, runs
from tests.services import Process, RedisServer, Worker, free_port, wait_until

# Loopback is 127.0.0.0/8: a client bound to this address is "another host" to the relay.
STRANGER = "127.0.0.2"
# The suite's relays run with WXRELAY_TIMESTAMP_WINDOW's default.
WINDOW = int(SETTINGS["timestamp_window"].default)


def message(
    mode: str = "plain", content: str = "hello", msg_id: str | int | None = None
) -> tuple[dict[str, str], bytes]:
    sim = WeChatSimulator("http://unused", TOKEN, APPID, AES_KEY, mode=mode)
    return sim.build_request({"MsgType": "text", "Content": content, "MsgId": str(msg_id or new_msg_id())})


def post(url: str, params: dict[str, str], body: bytes, source: str = "127.0.0.1", **headers: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=5, trust_env=False) as client:
        return client.post(url, params=params, content=body, headers=headers)


def refused(response: httpx.Response, relay, reason: str, before: float) -> bool:
    return (
        response.status_code == 403
        and "Traceback" not in response.text
        and relay.metric("wxrelay_rejected_total", reason=reason) == before + 1
    )


# --- replay ---------------------------------------------------------------------------------------------------------


def test_a_signature_replayed_with_another_body_is_refused_and_wechats_retry_passes(relays, redis_server):
    relay = relays[0]
    msg_id = str(new_msg_id())
    params, body = message(msg_id=msg_id)
    first = post(relay.callback, params, body)
    assert first.status_code == 200 and b"echo: hello" in first.content
    # WeChat's retry: the same query and the same body, answered from the ledger.
    assert post(relay.callback, params, body).status_code == 200
    # A captured URL with a body of the attacker's: the signature still checks, the body is not the one it came with.
    forged_id = str(new_msg_id())
    forged = body.replace(b"hello", b"transfer everything").replace(msg_id.encode(), forged_id.encode())
    before = relay.metric("wxrelay_rejected_total", reason="replayed")
    assert refused(post(relay.callback, params, forged), relay, "replayed", before)
    # The other relay shares the memory (Redis).
    other = relays[1]
    before_other = other.metric("wxrelay_rejected_total", reason="replayed")
    assert refused(post(other.callback, params, forged), other, "replayed", before_other)
    assert runs(redis_server, f"msg:{msg_id}") == 1
    assert not redis_server.client().exists(f"wxrelay:msg:msg:{forged_id}")
    # Remembered no longer than the timestamp is accepted: this one's was now. (Other tests' keys may hold
    # a timestamp of the future, accepted, and remembered, longer.)
    key = use_of(params["timestamp"], params["nonce"], params["signature"], body, WINDOW).key
    assert 0 < redis_server.client().ttl(key) <= WINDOW + 1
    assert all(redis_server.client().ttl(other) != -1 for other in redis_server.client().keys("wxrelay:sig:*"))


def test_safe_mode_needs_no_memory_of_signatures(relays, redis_server):
    redis_server.client().delete(*redis_server.client().keys("wxrelay:sig:*") or ["none"])
    params, body = message("safe")
    assert post(relays[0].callback, params, body).status_code == 200
    assert not redis_server.client().keys("wxrelay:sig:*")


def test_with_redis_away_a_relay_still_remembers_the_signatures_it_saw(log_dir, stack_env):
    lonely = RedisServer(log_dir)
    port = free_port()
    env = {**stack_env, "WXRELAY_REDIS_URL": lonely.url, "WXRELAY_SPOOL_DIR": str(log_dir / f"spool-{port}")}
    relay = Process(f"relay-{port}", [sys.executable, "-m", "relay", "--port", str(port)], log_dir, env)
    url = f"http://127.0.0.1:{port}/wechat"
    try:
        relay.wait_ready(lambda: httpx.get(f"http://127.0.0.1:{port}/livez").status_code == 200)
        lonely.stop()
        params, body = message()
        assert post(url, params, body).text == "success"  # spooled
        assert post(url, params, body.replace(b"hello", b"forged")).status_code == 403
    finally:
        relay.stop()


# --- encryption required --------------------------------------------------------------------------------------------


def test_required_encryption_refuses_plaintext_and_takes_safe_and_compat(start_relay, redis_server):
    relay = start_relay(WXRELAY_REQUIRE_ENCRYPTION="true")
    msg_id = str(new_msg_id())
    params, body = message("plain", msg_id=msg_id)
    before = relay.metric("wxrelay_rejected_total", reason="plaintext")
    assert refused(post(relay.callback, params, body), relay, "plaintext", before)
    assert not redis_server.client().exists(f"wxrelay:msg:msg:{msg_id}")
    for mode in ("safe", "compat"):
        sim = WeChatSimulator(relay.callback, TOKEN, APPID, AES_KEY, mode=mode, deadline=2)
        assert sim.say("sealed").text == "echo: sealed", mode
    # URL verification stays possible: WeChat checks the URL before any message.
    verify = {**message()[0], "echostr": "e123"}
    assert httpx.get(relay.callback, params=verify).text == "e123"


@pytest.mark.parametrize(
    "settings, line",
    [
        (
            {"WXRELAY_REQUIRE_ENCRYPTION": "true", "WECHAT_AES_KEY": ""},
            "WXRELAY_REQUIRE_ENCRYPTION needs WECHAT_AES_KEY (safe mode)",
        ),
        (
            {"WXRELAY_ALLOWED_SOURCES": "wechat", "WECHAT_APPSECRET": ""},
            "WXRELAY_ALLOWED_SOURCES=wechat needs an official account's AppSecret to fetch WeChat's addresses; "
            "without one, list them yourself",
        ),
        (
            {"WXRELAY_ALLOWED_SOURCES": "wechat, 10.0.0.300"},
            "WXRELAY_ALLOWED_SOURCES='wechat, 10.0.0.300' is invalid: '10.0.0.300' is not an address or network",
        ),
    ],
    ids=["encryption-without-key", "wechat-without-appsecret", "not-an-address"],
)
def test_a_setting_it_cannot_serve_stops_the_relay_with_one_line(log_dir, stack_env, settings, line):
    port = free_port()
    relay = Process(
        f"relay-{port}", [sys.executable, "-m", "relay", "--port", str(port)], log_dir, {**stack_env, **settings}
    )
    assert relay.popen.wait(30) == 2
    relay.stop()
    assert relay.log().strip().splitlines() == [f"wxrelay relay: configuration error: {line}"]


# --- the allow-list -------------------------------------------------------------------------------------------------


@pytest.fixture
def wechat_addresses(log_dir, stack_env, redis_server, wechat_api):
    """A worker that fetches WeChat's addresses (the fake API's list) into Redis."""
    redis_server.client().delete("wxrelay:wechat_addresses")
    wechat_api.set_callback_ips(["127.0.0.1", "10.20.0.0/16"])
    before = wechat_api.callback_ip_requests
    worker = Worker(log_dir, {**stack_env, "WXRELAY_ALLOWED_SOURCES": "wechat"}, f"fetcher{free_port()}", redis_server)
    try:
        wait_until(lambda: redis_server.client().get("wxrelay:wechat_addresses"), 20, "WeChat's addresses in Redis")
        assert wechat_api.callback_ip_requests == before + 1
        yield
    finally:
        worker.stop()
        wechat_api.set_callback_ips(["127.0.0.1"])


def test_wechats_own_addresses_get_in_and_others_are_refused(wechat_addresses, start_relay, redis_server):
    relay = start_relay(WXRELAY_ALLOWED_SOURCES="wechat")
    before = relay.metric("wxrelay_rejected_total", reason="source_address")
    # WeChat's address, straight to the relay (the address nginx would pass).
    params, body = message()
    assert post(relay.callback, params, body).status_code == 200
    # From nginx (a trusted proxy), for a client in one of WeChat's networks.
    params, body = message()
    assert post(relay.callback, params, body, **{"X-Real-IP": "10.20.3.4"}).status_code == 200
    # From nginx, for a client WeChat does not list.
    msg_id = str(new_msg_id())
    params, body = message(msg_id=msg_id)
    assert post(relay.callback, params, body, **{"X-Real-IP": "203.0.113.9"}).status_code == 403
    # Straight from another host, claiming to be WeChat: its header is not believed.
    params, body = message(msg_id=msg_id)
    assert post(relay.callback, params, body, source=STRANGER, **{"X-Real-IP": "127.0.0.1"}).status_code == 403
    # URL verification comes from WeChat too.
    verify = {**message()[0], "echostr": "e1"}
    assert httpx.get(relay.callback, params=verify).text == "e1"
    assert relay.metric("wxrelay_rejected_total", reason="source_address") == before + 2
    assert not redis_server.client().exists(f"wxrelay:msg:msg:{msg_id}")
    assert httpx.get(f"{relay.url}/healthz").json()["status"] == "ok"


def test_until_wechats_addresses_are_known_nobody_gets_in_and_healthz_says_why(log_dir, stack_env, redis_server):
    redis_server.client().delete("wxrelay:wechat_addresses")
    port = free_port()
    env = {**stack_env, "WXRELAY_ALLOWED_SOURCES": "wechat"}
    relay = Process(f"relay-{port}", [sys.executable, "-m", "relay", "--port", str(port)], log_dir, env)
    try:
        relay.wait_ready(lambda: httpx.get(f"http://127.0.0.1:{port}/livez").status_code == 200)
        params, body = message()
        assert post(f"http://127.0.0.1:{port}/wechat", params, body).status_code == 403
        report = httpx.get(f"http://127.0.0.1:{port}/healthz").json()
        assert report["status"] == "unhealthy"
        assert any("WeChat's callback addresses not fetched yet" in problem for problem in report["problems"])
    finally:
        relay.stop()


def test_a_static_list_needs_no_appsecret(start_relay):
    relay = start_relay(WXRELAY_ALLOWED_SOURCES="10.9.0.0/16, 192.0.2.7", WECHAT_APPSECRET="")
    params, body = message()
    assert post(relay.callback, params, body, **{"X-Real-IP": "10.9.8.7"}).status_code == 200
    params, body = message()
    assert post(relay.callback, params, body, **{"X-Real-IP": "192.0.2.8"}).status_code == 403
    params, body = message()
    assert post(relay.callback, params, body).status_code == 403  # loopback is not on this list
