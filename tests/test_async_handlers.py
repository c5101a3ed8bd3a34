"""Async handlers cost a coroutine, not a thread, and trade nothing of the
fault-tolerance contract for it: acknowledged only once finished, given back
when their worker dies, cancelled at the soft limit, failing alone."""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from simulator import DeliveryResult, WeChatSimulator
from tests.bots.awaiting_bot import CANCELLED, HOLD, IN_FLIGHT, PEAK
from tests.conftest import TOKEN, WECHAT_TIMEOUT, runs
from tests.services import RelayProcess, Worker, wait_until

THREADS = 16  # the suite's WXRELAY_WORKER_CONCURRENCY
_ids = itertools.count(int(time.time() * 1000) % 10**9 * 1000)


@pytest.fixture
def env(stack_env, redis_server, request) -> Iterator[dict[str, str]]:
    client = redis_server.client()
    client.delete(IN_FLIGHT, PEAK, CANCELLED, HOLD)
    queue = f"awaiting-{request.node.name[-20:]}"
    yield {**stack_env, "WXRELAY_QUEUE": queue, "WXRELAY_BOT": "tests/bots/awaiting_bot.py:bot"}
    client.delete(IN_FLIGHT, PEAK, CANCELLED, HOLD)


@pytest.fixture
def relay(log_dir, env, worker) -> Iterator[RelayProcess]:
    process = RelayProcess(log_dir, env)
    yield process
    process.stop()


class Conversations:
    """Many users, each sending one message at once, as WeChat delivers them."""

    def __init__(self, relay: RelayProcess, prefix: str) -> None:
        self.sim = WeChatSimulator(relay.callback, TOKEN, deadline=WECHAT_TIMEOUT)
        self.prefix = prefix
        self.ids: dict[str, str] = {}
        self.results: dict[str, DeliveryResult] = {}
        self._pool = ThreadPoolExecutor(500)
        self._futures: list = []

    def user(self, msg_id: str) -> str:
        return f"o_{self.prefix}_{msg_id}"

    def send(self, count: int, text: str) -> list[str]:
        ids = [str(next(_ids)) for _ in range(count)]
        for msg_id in ids:
            self._futures.append(self._pool.submit(self._say, msg_id, text))
        return ids

    def _say(self, msg_id: str, text: str) -> None:
        self.results[msg_id] = self.sim.say(text, user=self.user(msg_id), MsgId=msg_id)

    def done(self) -> None:
        for future in self._futures:
            future.result()
        self._pool.shutdown()

    def wait_for_reply(self, msg_id: str, wechat_api, timeout: float) -> None:
        wait_until(lambda: self.got(msg_id, wechat_api), timeout, f"the reply to {msg_id}")

    def got(self, msg_id: str, wechat_api) -> list[str]:
        """Everything the user saw: the passive reply, then each customer-service send."""
        result = self.results[msg_id]
        passive = [result.text] if result.text else []
        return passive + [m["text"]["content"] for m in wechat_api.sends_to(self.user(msg_id))]


def unacked_on(redis_server, queue: str) -> int:
    """Messages of `queue` that kombu holds unacknowledged (for some worker)."""
    entries = redis_server.client().hvals("unacked")
    return sum(1 for entry in entries if json.loads(entry)[2] == queue)


def test_hundreds_of_async_handlers_await_at_once_on_a_few_threads(log_dir, env, relay, redis_server, wechat_api):
    worker = Worker(log_dir, env, "awaiting", redis_server)
    try:
        talk = Conversations(relay, "many")
        # Each awaits past the first delivery: answered on a later one, or late.
        ids = talk.send(200, "await 1.5")
        failing = talk.send(5, "async boom")
        # Acknowledged only once finished: while they await, kombu holds them unacknowledged.
        peak = wait_until(lambda: int(redis_server.client().get(PEAK) or 0) >= 150, 30, "150 handlers awaiting")
        assert peak and unacked_on(redis_server, env["WXRELAY_QUEUE"]) >= 150 - THREADS
        talk.done()
        for msg_id in ids:
            talk.wait_for_reply(msg_id, wechat_api, 15)
            assert talk.got(msg_id, wechat_api) == ["awaited await 1.5"], msg_id
            assert runs(redis_server, f"msg:{msg_id}") == 1
        print(f"\npeak {int(redis_server.client().get(PEAK))} handlers awaiting on {THREADS} threads")
        # A failing handler is logged with its message's key and takes nobody else with it.
        for msg_id in failing:
            assert talk.results[msg_id].body == b"success" and f"on message msg:{msg_id}" in worker.log()
        assert "an async handler failed on purpose" in worker.log()
        wait_until(lambda: unacked_on(redis_server, env["WXRELAY_QUEUE"]) == 0, 10, "every message acknowledged")
    finally:
        worker.stop()


def test_a_worker_killed_with_hundreds_awaiting_loses_none_and_answers_each_once(
    log_dir, env, relay, redis_server, wechat_api
):
    client = redis_server.client()
    client.set(HOLD, 120)  # they would await long past WeChat's deliveries
    doomed = Worker(log_dir, env, "doomed-awaiting", redis_server)
    heir = None
    try:
        talk = Conversations(relay, "killed")
        ids = talk.send(500, "await 0.2")
        wait_until(lambda: int(client.get(IN_FLIGHT) or 0) == 500, 30, "500 handlers awaiting")
        doomed.stop(signal.SIGKILL)
        killed = time.monotonic()
        client.delete(HOLD)
        talk.done()
        # (Whether WeChat's 1 s deliveries were answered in time is the relays' affair, and the
        # machine's: 500 at once on a busy machine may miss. What the user gets is counted below.)
        heir = Worker(log_dir, env, "heir-awaiting", redis_server)
        for msg_id in ids:
            talk.wait_for_reply(msg_id, wechat_api, 60)
        print(f"\n500 awaiting messages of a killed worker answered within {time.monotonic() - killed:.1f} s")
        assert {msg_id: talk.got(msg_id, wechat_api) for msg_id in ids} == dict.fromkeys(ids, ["awaited await 0.2"])
        # They ran again (once more each), and nothing ran a third time.
        assert {runs(redis_server, f"msg:{msg_id}") for msg_id in ids} == {2}
        wait_until(lambda: unacked_on(redis_server, env["WXRELAY_QUEUE"]) == 0, 10, "every message acknowledged")
    finally:
        for worker in (doomed, heir):
            if worker is not None:
                worker.stop()


def test_the_soft_time_limit_cancels_an_async_handler(log_dir, env, relay, redis_server):
    worker = Worker(log_dir, {**env, "WXRELAY_TASK_SOFT_TIME_LIMIT": "1"}, "awaiting-limit", redis_server)
    try:
        talk = Conversations(relay, "limit")
        [overrun] = talk.send(1, "await 30")
        [quick] = talk.send(1, "await 0.1")
        talk.done()
        assert talk.results[quick].text == "awaited await 0.1"
        assert talk.results[overrun].body == b"success"
        # Cancelled on the loop: its own `except CancelledError` ran.
        wait_until(lambda: int(redis_server.client().get(CANCELLED) or 0) == 1, 10, "the handler to be cancelled")
        assert f"on message msg:{overrun}" in worker.log() and "TimeoutError" in worker.log()
    finally:
        worker.stop()


def test_a_warm_shutdown_lets_awaiting_handlers_finish(log_dir, env, relay, redis_server):
    worker = Worker(log_dir, env, "awaiting-shutdown", redis_server)
    try:
        talk = Conversations(relay, "shutdown")
        ids = talk.send(30, "await 1.2")
        wait_until(lambda: int(redis_server.client().get(IN_FLIGHT) or 0) == 30, 10, "30 handlers awaiting")
        worker.popen.send_signal(signal.SIGTERM)
        talk.done()
        assert worker.popen.wait(20) == 0
        assert {talk.results[msg_id].text for msg_id in ids} == {"awaited await 1.2"}
        assert {runs(redis_server, f"msg:{msg_id}") for msg_id in ids} == {1}
        assert unacked_on(redis_server, env["WXRELAY_QUEUE"]) == 0
    finally:
        worker.stop()
