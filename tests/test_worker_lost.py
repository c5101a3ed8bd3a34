"""A worker killed mid-task: WeChat still gets a well-formed answer, the message
is not lost, and its record does not swallow the next message."""

from __future__ import annotations

import signal
import threading
import time

from appserver.sweeper import INTERVAL
from common import ledger
from relay.broker import HANDLE_TASK
from relay.celery_message import task_message
from simulator import WeChatSimulator
from simulator.messages import new_msg_id, text_message, to_xml
from tests.conftest import AES_KEY, APPID, TOKEN, WECHAT_TIMEOUT, runs
from tests.services import RelayProcess, Worker, wait_until

# More queued tasks than the sweep reads of a queue.
BACKLOG = ledger.QUEUE_SCAN + 500


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


def test_a_task_lost_behind_a_backlog_is_queued_again_first_in_line(log_dir, stack_env, redis_server, wechat_api):
    # One slot, taken by a long handler: the queue only grows. Its worker still sweeps.
    queue = "worker-lost-backlog"
    env = {**stack_env, "WXRELAY_QUEUE": queue, "WXRELAY_WORKER_CONCURRENCY": "1"}
    client = redis_server.client()
    busy = Worker(log_dir, env, "busy", redis_server)
    relay = RelayProcess(log_dir, env)
    heir = None
    try:
        sim = WeChatSimulator(relay.callback, TOKEN, APPID, AES_KEY, mode="plain", deadline=WECHAT_TIMEOUT)
        blocker = new_msg_id()
        params, body = sim.build_request({"MsgType": "text", "Content": "slow 120", "MsgId": blocker})
        threading.Thread(target=sim.deliver, args=(params, body), daemon=True).start()
        wait_until(lambda: runs(redis_server, f"msg:{blocker}") == 1, 10, "the long handler to start")

        msg_id = new_msg_id()
        user = f"o_backlog_{msg_id}"
        results = []
        params, body = sim.build_request(
            {"MsgType": "text", "Content": "behind", "MsgId": msg_id, "FromUserName": user}
        )
        sender = threading.Thread(target=lambda: results.append(sim.deliver(params, body)))
        sender.start()
        record = f"wxrelay:msg:msg:{msg_id}"
        task = wait_until(lambda: client.hget(record, "task"), 10, "the message to be claimed")
        # A backlog queued after it, as the relays queue messages (their records due long after this test).
        claim = client.register_script(ledger.CLAIM)
        with client.pipeline(transaction=False) as pipe:
            for n in range(BACKLOG):
                key, tag = f"msg:backlog-{msg_id}-{n}", f"backlog-{msg_id}-{n}"
                message = task_message(
                    HANDLE_TASK, [to_xml(text_message(f"backlog {n}")), key], queue, delivery_tag=tag
                )
                args = [600, message, 600, 0, key, tag]
                claim(keys=[ledger.record_key(key), queue, ledger.DUE_KEY], args=args, client=pipe)
            pipe.execute()
        # Taken from the front of the line by a worker killed before kombu recorded it: nowhere but in the ledger.
        assert client.rpop(queue) == task
        lost = time.monotonic()
        assert client.llen(queue) == BACKLOG > ledger.QUEUE_SCAN
        sender.join()
        assert results[0].answered and results[0].body == b"success"
        # Found at its first look once due, queued again at its second: first in line, the backlog behind it.
        # The bound, and some slack for a loaded machine.
        bound = ledger.due_after(3, WECHAT_TIMEOUT) + ledger.SUSPECT + 2 * INTERVAL
        wait_until(lambda: client.lindex(queue, -1) == task, bound + 10, "the lost task to be queued again")
        found = time.monotonic() - lost
        print(f"lost behind {BACKLOG} queued tasks: queued again after {found:.1f} s (bound {bound:.0f} s)")
        heir = Worker(log_dir, env, "heir", redis_server)
        wechat_api.wait_for(lambda api: any(m["touser"] == user for m in api.messages), timeout=30)
        assert [m["text"]["content"] for m in wechat_api.messages if m["touser"] == user] == ["echo: behind"]
        assert runs(redis_server, f"msg:{msg_id}") == 1
    finally:
        relay.stop()
        for worker in (busy, heir):
            if worker is not None:
                worker.stop(signal.SIGKILL)
        client.delete(queue)
