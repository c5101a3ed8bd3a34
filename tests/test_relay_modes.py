"""Messages and events through two relays, one Redis and a real worker, in all three modes."""

from __future__ import annotations

import pytest

from tests.conftest import runs

MODES = ["plain", "compat", "safe"]


@pytest.mark.parametrize("mode", MODES)
def test_text_is_answered_passively_in_every_mode(wechat, mode, relays):
    for relay in range(len(relays)):
        result = wechat(mode, relay=relay).say(f"hello {mode} {relay}")
        assert result.answered and result.delivery == 1
        assert result.text == f"echo: hello {mode} {relay}"
        assert result.decrypted is (mode != "plain")
        assert result.reply["ToUserName"] == "o_simulated_user"


@pytest.mark.parametrize("mode", MODES)
def test_events_are_routed_in_every_mode(wechat, mode):
    sim = wechat(mode)
    assert sim.event("subscribe").text == "welcome"
    assert sim.event("CLICK", key="MENU_A").text == "clicked A"
    assert sim.event("SCAN", key="42").text == "scanned 42"
    assert sim.event("LOCATION", Latitude="23.1", Longitude="113.3", Precision="50").text == "at 23.1,113.3"
    assert sim.event("VIEW", key="http://example.invalid/").text == "fallback: event"


def test_no_reply_answers_success(wechat, redis_server):
    result = wechat("safe").say("silent")
    assert result.answered and result.reply is None and result.body == b"success"


def test_handler_error_answers_success_and_frees_the_next_message(wechat):
    sim = wechat("plain")
    failed = sim.say("boom")
    assert failed.answered and failed.body == b"success"
    assert sim.say("after boom").text == "echo: after boom"


def test_async_handler(wechat):
    assert wechat("compat").say("async hi").text == "async reply to async hi"


def test_session_persists_between_messages(wechat):
    sim = wechat("plain")
    user = "o_session_user"
    assert [sim.say("count", user=user).text for _ in range(3)] == ["count=1", "count=2", "count=3"]


def test_news_reply(wechat):
    result = wechat("safe").say("news")
    assert result.reply_message_type == "news"
    assert result.reply["ArticleCount"] == "1"


def test_each_message_runs_once(wechat, redis_server):
    sim = wechat("plain")
    result = sim.send(sim_message := {"MsgType": "text", "Content": "once", "MsgId": "987654321"})
    assert result.text == "echo: once" and sim_message
    assert runs(redis_server, "msg:987654321") == 1
