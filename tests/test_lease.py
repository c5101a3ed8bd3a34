"""A worker keeps the messages it holds for as long as their handlers run, and
loses them within a lease when it dies."""

from __future__ import annotations

import pytest

from simulator import WeChatSimulator
from simulator.messages import new_msg_id
from tests.conftest import AES_KEY, APPID, TOKEN, WECHAT_TIMEOUT, runs
from tests.services import RelayProcess, Worker

LEASE = 3


@pytest.mark.parametrize(
    ("bot", "verb", "reply"),
    [
        ("tests/bots/counting_bot.py:bot", "slow", "slow reply to"),
        ("tests/bots/awaiting_bot.py:bot", "await", "awaited"),
    ],
    ids=["sync", "async"],
)
def test_a_handler_longer_than_the_lease_runs_once(log_dir, stack_env, redis_server, wechat_api, bot, verb, reply):
    # Without renewal kombu would give the message to a second worker after one lease;
    # an async handler's message, awaiting on no thread, is renewed all the same.
    env = {**stack_env, "WXRELAY_QUEUE": f"lease-{verb}", "WXRELAY_LEASE": str(LEASE), "WXRELAY_BOT": bot}
    workers = [Worker(log_dir, env, f"lease{n}", redis_server) for n in range(2)]
    relay = RelayProcess(log_dir, env)
    try:
        sim = WeChatSimulator(relay.callback, TOKEN, APPID, AES_KEY, mode="plain", deadline=WECHAT_TIMEOUT)
        msg_id = new_msg_id()
        user = f"o_lease_{msg_id}"
        seconds = 3 * LEASE
        result = sim.send({"MsgType": "text", "Content": f"{verb} {seconds}", "MsgId": msg_id, "FromUserName": user})
        assert result.body == b"success"
        wechat_api.wait_for(lambda api: any(m["touser"] == user for m in api.messages), timeout=seconds + 20)
        # Unrenewed, the message would have been restored after one lease and
        # run again while the first run still slept.
        assert runs(redis_server, f"msg:{msg_id}") == 1
        assert [m for m in wechat_api.messages if m["touser"] == user] == [
            {"touser": user, "msgtype": "text", "text": {"content": f"{reply} {verb} {seconds}"}}
        ]
    finally:
        relay.stop()
        for worker in workers:
            worker.stop()
