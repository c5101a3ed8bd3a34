"""A worker keeps the messages it holds for as long as their handlers run, and
loses them within a lease when it dies."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import redis

from appserver.app import UNACKED, UNACKED_INDEX
from chaos.bot import RUNS_ENV
from relay.broker import HANDLE_TASK
from relay.celery_message import task_message
from simulator import WeChatSimulator
from simulator.messages import new_msg_id, text_message, to_xml
from tests.conftest import AES_KEY, APPID, TOKEN, WECHAT_TIMEOUT, runs
from tests.services import RelayProcess, Worker, wait_until

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


def test_redis_full_for_longer_than_a_lease_runs_the_handler_once(log_dir, stack_env, redis_server, wechat_api):
    # Redis refuses every write while full: unless the lease is renewed all the same, kombu gives the
    # message to the other worker once Redis has room again, while its first run still sleeps.
    env = {**stack_env, "WXRELAY_QUEUE": "lease-full", "WXRELAY_LEASE": str(LEASE)}
    workers = [Worker(log_dir, env, f"full{n}", redis_server) for n in range(2)]
    relay = RelayProcess(log_dir, env)
    client = redis_server.client()
    limit = client.config_get("maxmemory")["maxmemory"]
    try:
        sim = WeChatSimulator(relay.callback, TOKEN, APPID, AES_KEY, mode="plain", deadline=WECHAT_TIMEOUT)
        msg_id = new_msg_id()
        user = f"o_full_{msg_id}"
        seconds = 5 * LEASE
        params, body = sim.build_request(
            {"MsgType": "text", "Content": f"slow {seconds}", "MsgId": msg_id, "FromUserName": user}
        )
        results = []
        sender = threading.Thread(target=lambda: results.append(sim.deliver(params, body)))
        sender.start()
        wait_until(lambda: runs(redis_server, f"msg:{msg_id}") == 1, 10, "the handler to start")
        tag = client.hget(f"wxrelay:msg:msg:{msg_id}", "tag")
        wait_until(lambda: client.zscore(UNACKED_INDEX, tag) is not None, 5, "kombu to record the message held")
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)
        full = time.monotonic()
        try:
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                client.set("test:full", 1)
            # Full for longer than a lease and kombu's look at it: unrenewed, the message is overdue.
            time.sleep(3 * LEASE)  # the fault's length, not a wait for a condition
        finally:
            client.config_set("maxmemory", limit)
        print(f"Redis full for {time.monotonic() - full:.1f} s")
        sender.join()
        wechat_api.wait_for(lambda api: any(m["touser"] == user for m in api.messages), timeout=seconds + 20)
        assert runs(redis_server, f"msg:{msg_id}") == 1
        assert [m["text"]["content"] for m in wechat_api.messages if m["touser"] == user] == [
            f"slow reply to slow {seconds}"
        ]
    finally:
        client.config_set("maxmemory", limit)
        relay.stop()
        for worker in workers:
            worker.stop()


def test_a_message_taken_while_redis_is_full_runs_once(log_dir, stack_env, redis_server, wechat_api, tmp_path):
    # A worker takes a message while Redis is full (taking frees memory, Redis allows it) and runs it: unless
    # kombu's record of it is written all the same, the sweep finds it neither queued nor held once Redis has
    # room, and queues it again for another worker while it runs. Runs are counted in a file (chaos/bot.py):
    # Redis takes no count while full.
    queue = "lease-full-taken"
    runs_file = tmp_path / "runs"
    env = {
        **stack_env, "WXRELAY_QUEUE": queue, "WXRELAY_LEASE": str(LEASE), "WXRELAY_WORKER_CONCURRENCY": "1",
        "WXRELAY_BOT": "chaos/bot.py:bot", RUNS_ENV: str(runs_file),
    }  # fmt: skip
    client = redis_server.client()
    limit = client.config_get("maxmemory")["maxmemory"]
    taker = Worker(log_dir, env, "taker", redis_server)
    relay = RelayProcess(log_dir, env)
    heir = None

    def ran(key: str) -> int:
        return runs_file.read_text().split().count(key) if runs_file.exists() else 0

    try:
        # The one slot taken by a message without a ledger record, which writes nothing when it ends.
        blocker = new_msg_id()
        client.lpush(queue, task_message(HANDLE_TASK, [to_xml(text_message("slow 3", msg_id=blocker))], queue))
        wait_until(lambda: ran(f"msg:{blocker}") == 1, 10, "the first message to take the slot")
        sim = WeChatSimulator(relay.callback, TOKEN, APPID, AES_KEY, mode="plain", deadline=WECHAT_TIMEOUT)
        msg_id = new_msg_id()
        user, key = f"o_taken_{msg_id}", f"msg:{msg_id}"
        seconds = 6 * LEASE
        params, body = sim.build_request(
            {"MsgType": "text", "Content": f"slow {seconds}", "MsgId": msg_id, "FromUserName": user}
        )
        sender = threading.Thread(target=sim.deliver, args=(params, body), daemon=True)
        sender.start()
        tag = wait_until(lambda: client.hget(f"wxrelay:msg:{key}", "tag"), 10, "the message to be queued")
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)
        try:
            wait_until(lambda: ran(key) == 1, 10, "the worker to take the message while Redis is full")
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                client.set("test:full", 1)
            wait_until(lambda: client.hexists(UNACKED, tag), 5, "kombu's record of the message")
        finally:
            client.config_set("maxmemory", limit)
        # Another worker with room, while the first still runs the message: nothing for it to take.
        heir = Worker(log_dir, env, "heir", redis_server)
        wechat_api.wait_for(lambda api: any(m["touser"] == user for m in api.messages), timeout=seconds + 20)
        assert ran(key) == 1
        assert [m["text"]["content"] for m in wechat_api.messages if m["touser"] == user] == [
            f"slow reply to slow {seconds}"
        ]
    finally:
        client.config_set("maxmemory", limit)
        relay.stop()
        for worker in (taker, heir):
            if worker is not None:
                worker.stop(signal.SIGKILL)
        client.delete(queue)
