"""Redis away: the relay answers WeChat in time from its spool, the spool survives
the relay's restart, and its messages are answered once when Redis is back."""

from __future__ import annotations

import signal
import sys

import httpx
import redis

from simulator import WeChatSimulator
from simulator.messages import new_msg_id
from tests.conftest import AES_KEY, APPID, TOKEN
from tests.services import Process, RedisServer, Worker, app_user, free_port, require, wait_until


def restarted_redis(log_dir, port: int, password: str) -> Process:
    argv = [
        require("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password,
        *app_user(password), "--save", "", "--appendonly", "yes",
        "--dir", str(log_dir), "--appendfilename", f"replay-{port}.aof",
    ]  # fmt: skip
    process = Process(f"redis-again-{port}", argv, log_dir)
    process.wait_ready(lambda: redis.Redis(port=port, password=password).ping())
    return process


def test_a_spooled_message_survives_a_relay_restart_and_is_answered_once(log_dir, stack_env, wechat_api):
    redis_server = RedisServer(log_dir)
    port, password = redis_server.port, redis_server.password
    env = {**stack_env, "WXRELAY_REDIS_URL": redis_server.url, "WXRELAY_SPOOL_DIR": str(log_dir / "replay-spool")}
    relay_port = free_port()
    argv = [sys.executable, "-m", "relay", "--port", str(relay_port)]
    relay = Process(f"relay-{relay_port}", argv, log_dir, env)
    again = worker = None
    try:
        relay.wait_ready(lambda: httpx.get(f"http://127.0.0.1:{relay_port}/livez").status_code == 200)
        redis_server.stop()
        sim = WeChatSimulator(f"http://127.0.0.1:{relay_port}/wechat", TOKEN, APPID, AES_KEY, mode="safe", deadline=3)
        users = [f"o_spooled_{new_msg_id()}" for _ in range(3)]
        for user in users:
            result = sim.say("kept on disk", user=user)
            assert result.delivery == 1 and result.body == b"success"
        # Killed with its spool on disk, started again on the same port: the same spool.
        relay.stop(signal.SIGKILL)
        relay = Process(f"relay-{relay_port}-again", argv, log_dir, env)
        relay.wait_ready(lambda: httpx.get(f"http://127.0.0.1:{relay_port}/livez").status_code == 200)
        assert httpx.get(f"http://127.0.0.1:{relay_port}/healthz").json()["spooled"] == 3
        again = restarted_redis(log_dir, port, password)
        worker = Worker(log_dir, env, "replayer", redis_server)
        wechat_api.wait_for(lambda api: {m["touser"] for m in api.messages} >= set(users), timeout=60)
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{relay_port}/healthz").json()["spooled"] == 0, 10, "replay")
        for user in users:
            assert [m["text"]["content"] for m in wechat_api.messages if m["touser"] == user] == ["echo: kept on disk"]
    finally:
        relay.stop()
        for process in (worker, again):
            if process is not None:
                process.stop()
