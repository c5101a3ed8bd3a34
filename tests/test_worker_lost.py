"""A worker killed mid-task: WeChat still gets a well-formed answer, the message
is not lost, and its record does not swallow the next message."""

from __future__ import annotations

import signal
import threading
import time

from simulator import WeChatSimulator
from simulator.messages import new_msg_id
from tests.conftest import AES_KEY, APPID, TOKEN, WECHAT_TIMEOUT, runs
from tests.services import RelayProcess, Worker, wait_until


def test_a_message_survives_its_worker_being_killed(log_dir, stack_env, redis_server, wechat_api):
    # A queue of its own; the lease at its default: the broker gives the killed
    # worker's message back within one lease, however long the time limits.
    env = {**stack_env, "WXRELAY_QUEUE": "worker-lost"}
    doomed = Worker(log_dir, env, "doomed", redis_server)
    relay = RelayProcess(log_dir, env)
    heir = None
    try:
        sim = WeChatSimulator(relay.callback, TOKEN, APPID, AES_KEY, mode="safe", deadline=WECHAT_TIMEOUT)
        msg_id = new_msg_id()
        user = f"o_lost_{msg_id}"
        params, body = sim.build_request(
            {"MsgType": "text", "Content": "slow 2", "MsgId": msg_id, "FromUserName": user}
        )
        results = []
        sender = threading.Thread(target=lambda: results.append(sim.deliver(params, body)))
        sender.start()
        wait_until(lambda: runs(redis_server, f"msg:{msg_id}") == 1, 10, "the handler to start")
        doomed.stop(signal.SIGKILL)
        killed = time.monotonic()
        sender.join()
        # WeChat got `success` from the last delivery, in time.
        assert results[0].answered and results[0].body == b"success"
        heir = Worker(log_dir, env, "heir", redis_server)
        # The message comes back to the new worker and its reply goes late.
        wechat_api.wait_for(lambda api: any(m["touser"] == user for m in api.messages), timeout=30)
        assert time.monotonic() - killed < 30
        assert [m["text"]["content"] for m in wechat_api.messages if m["touser"] == user] == ["slow reply to slow 2"]
        record = f"wxrelay:msg:msg:{msg_id}"
        wait_until(lambda: redis_server.client().hget(record, "state") == b"sent", 5, "the send to be recorded")
        # The next message from the same user is answered normally.
        assert sim.say("next one", user=user).text == "echo: next one"
    finally:
        relay.stop()
        for worker in (doomed, heir):
            if worker is not None:
                worker.stop()
