"""/livez, /healthz and /metrics, and what a relay does when Redis is gone."""

from __future__ import annotations

import sys

import httpx

from simulator import WeChatSimulator
from simulator.messages import new_msg_id
from tests.conftest import AES_KEY, APPID, TOKEN
from tests.services import Process, RedisServer, free_port, wait_until


def test_healthz_reports_redis_workers_and_reply_channel(relays):
    report = httpx.get(f"{relays[0].url}/healthz").json()
    assert report == {
        "redis": True, "workers": report["workers"], "reply_channel": True, "spooled": 0, "problems": [],
        "status": "ok", "last_minute": report["last_minute"],
    }  # fmt: skip
    assert report["workers"] >= 1


def test_healthz_counts_the_last_minute_by_outcome_and_rejection(relays, wechat):
    def last_minute() -> dict[str, dict[str, int]]:
        return httpx.get(f"{relays[1].url}/healthz").json()["last_minute"]

    # A snapshot a second: what the relay had before, once it is in every snapshot of the minute.
    before = last_minute()
    sim = wechat("plain", relay=1)
    assert sim.say("hello").text == "echo: hello"
    params, body = sim.build_request({"MsgType": "text", "Content": "forged", "MsgId": new_msg_id()})
    assert sim.deliver({**params, "signature": "0" * 40}, body).answered is False
    wait_until(
        lambda: (
            (now := last_minute())["messages"].get("passive", 0) > before["messages"].get("passive", 0)
            and now["rejected"].get("signature", 0) > before["rejected"].get("signature", 0)
        ),
        5,
        "the relay's last minute to count the message and the refusal",
    )


def test_healthz_says_what_is_missing_and_a_message_without_redis_is_spooled(log_dir, stack_env):
    lonely = RedisServer(log_dir)
    port = free_port()
    env = {**stack_env, "WXRELAY_REDIS_URL": lonely.url}
    relay = Process(f"relay-{port}", [sys.executable, "-m", "relay", "--port", str(port)], log_dir, env)
    try:
        relay.wait_ready(lambda: httpx.get(f"http://127.0.0.1:{port}/livez").status_code == 200)
        response = httpx.get(f"http://127.0.0.1:{port}/healthz")
        assert response.status_code == 503 and response.json()["workers"] == 0
        assert response.json()["status"] == "unhealthy"
        # With Redis gone the process is still alive, and a message is kept on
        # disk and answered in time: `success`, never a 5xx.
        lonely.stop()
        assert httpx.get(f"http://127.0.0.1:{port}/livez").text == "ok"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["redis"] is False
        sim = WeChatSimulator(f"http://127.0.0.1:{port}/wechat", TOKEN, APPID, AES_KEY, deadline=3, deliveries=1)
        result = sim.say("nobody home")
        assert [a.outcome for a in result.attempts] == [200] and result.body == b"success"
        report = httpx.get(f"http://127.0.0.1:{port}/healthz").json()
        assert report["spooled"] == 1 and report["status"] == "unhealthy"
        assert any(problem.startswith("Redis unreachable") for problem in report["problems"])
        assert any("spooled on disk" in problem for problem in report["problems"])
        # The brief answer nginx gives the world says no more than that.
        brief = httpx.get(f"http://127.0.0.1:{port}/healthz/brief")
        assert (brief.status_code, brief.text) == (503, "not ok")
    finally:
        relay.stop()


def test_the_brief_healthz_and_every_answer_leak_nothing(relays):
    brief = httpx.get(f"{relays[0].url}/healthz/brief")
    assert (brief.status_code, brief.text, brief.headers["content-type"]) == (200, "ok", "text/plain; charset=utf-8")
    for path in ("/healthz/brief", "/healthz", "/livez", "/metrics", "/wechat", "/nowhere"):
        response = httpx.get(f"{relays[0].url}{path}")
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert "server" not in response.headers, (path, response.headers.get("server"))


def test_metrics_count_messages_by_outcome(relays, wechat):
    before = relays[0].metric("wxrelay_messages_total", outcome="passive")
    wechat("plain").say("count me")
    assert relays[0].metric("wxrelay_messages_total", outcome="passive") == before + 1
    assert relays[0].metric("wxrelay_reply_seconds_count") >= 1
    assert "wxrelay_loop_lag_max_seconds" in httpx.get(f"{relays[0].url}/metrics").text


def test_a_reply_no_delivery_comes_back_for_goes_late_once(relays, redis_server, wechat_api, wechat):
    # WeChat (here) delivers once and never again: the sweep sends the reply by the API.
    sim = wechat("plain", deliveries=1)
    msg_id = new_msg_id()
    user = f"o_swept_{msg_id}"
    result = sim.send({"MsgType": "text", "Content": "slow 1.5", "MsgId": msg_id, "FromUserName": user})
    assert not result.answered and [a.outcome for a in result.attempts] == ["timeout"]
    wechat_api.wait_for(lambda api: any(m["touser"] == user for m in api.messages), timeout=20)
    assert [m["text"]["content"] for m in wechat_api.messages if m["touser"] == user] == ["slow reply to slow 1.5"]
    wait_until(lambda: redis_server.client().hget(f"wxrelay:msg:msg:{msg_id}", "state") == b"sent", 5, "sent")
