"""Each worker's /metrics, scraped over HTTP from real workers after real messages: handler outcomes and
run times, handlers in flight, late sends by result and errcode, token fetches and refreshes, the queue's
depth and age, a prefork pool's children summed. A port taken, or Redis away, costs the worker nothing."""

from __future__ import annotations

import glob
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from celery import Celery
from prometheus_client import REGISTRY

from appserver.bot import Bot
from appserver.handling import handle
from chaos.appliance import metric
from simulator import WeChatSimulator
from simulator.api import FakeWeChatAPI
from simulator.messages import event_message, text_message, to_xml
from tests.conftest import APPID, SECRET, TOKEN, WECHAT_TIMEOUT
from tests.services import RedisServer, RelayProcess, Worker, free_port, wait_until

SOFT_LIMIT = 1
# "slow LATE" outlasts the one delivery's reply budget (0.8 s): its reply goes by the customer-service API.
LATE = 1.2


@pytest.fixture(scope="module")
def api() -> Iterator[FakeWeChatAPI]:
    """A WeChat API of this module's own: its errcodes and token fetches are these tests' alone."""
    with FakeWeChatAPI(appid=APPID, secret=SECRET) as fake:
        yield fake


@pytest.fixture(scope="module")
def own_redis(log_dir) -> Iterator[RedisServer]:
    server = RedisServer(log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(stack_env, own_redis, api) -> dict[str, str]:
    # WeChat delivers once: the relay answers `success` at the reply budget, and a slower reply goes late.
    return {
        **stack_env,
        "WXRELAY_REDIS_URL": own_redis.url,
        "WECHAT_API_BASE": api.base_url,
        "WXRELAY_DELIVERIES": "1",
        "WXRELAY_TASK_SOFT_TIME_LIMIT": str(SOFT_LIMIT),
        "WXRELAY_TASK_TIME_LIMIT": "10",
        "WXRELAY_QUEUE": "metrics",
    }


@pytest.fixture(scope="module")
def worker(log_dir, env, own_redis) -> Iterator[Worker]:
    process = Worker(log_dir, env, "metrics0", own_redis, metrics_port=free_port())
    yield process
    process.stop()


@pytest.fixture(scope="module")
def relay(log_dir, env, worker) -> Iterator[RelayProcess]:
    process = RelayProcess(log_dir, env)
    yield process
    process.stop()


def wechat(relay: RelayProcess) -> WeChatSimulator:
    return WeChatSimulator(relay.callback, TOKEN, deadline=WECHAT_TIMEOUT, deliveries=1)


def user(what: str) -> str:
    return f"o_metrics_{what}_{uuid.uuid4().hex[:8]}"


def in_background(*calls) -> list[threading.Thread]:
    threads = [threading.Thread(target=call) for call in calls]
    for thread in threads:
        thread.start()
    return threads


class Since:
    """A worker's samples now, less what they were when this was made."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.before = worker.metrics()

    def __call__(self, name: str, **labels: str) -> float:
        return self.worker.metric(name, **labels) - metric(self.before, name, **labels)


def test_handler_outcomes_run_times_and_handlers_in_flight(worker, relay, own_redis):
    since = Since(worker)
    sim = wechat(relay)
    slow, awaiting = user("slow"), user("awaiting")
    # One holds a thread, the other awaits on the handlers' loop until the soft limit cancels it.
    held = in_background(lambda: sim.say("slow 1.5", user=slow), lambda: sim.say("async slow 30", user=awaiting))
    wait_until(lambda: worker.metric("wxrelay_handlers_in_flight", account="default") == 2, 10, "two in flight", 0.05)
    assert sim.say("hello", user=user("hello")).text == "echo: hello"
    assert sim.say("async hi", user=user("async")).text == "async reply to async hi"
    sim.say("silent", user=user("silent"))
    sim.say("boom", user=user("boom"))
    for thread in held:
        thread.join()
    outcomes = "wxrelay_handler_outcomes_total"
    wait_until(lambda: since(outcomes) == 6, 10, "six handler runs", 0.05)
    ended = {o: since(outcomes, account="default", outcome=o) for o in ("replied", "no_reply", "raised", "timed_out")}
    assert ended == {"replied": 3, "no_reply": 1, "raised": 1, "timed_out": 1}
    counts = {h: since("wxrelay_handler_seconds_count", account="default", handler=h) for h in ("echo", "wait_async")}
    counts |= {h: since("wxrelay_handler_seconds_count", handler=h) for h in ("slow", "async_slow", "silent", "boom")}
    assert counts == dict.fromkeys(counts, 1)
    # Timed from the message's parsing: the cancelled one ran its soft limit, the slow one its 1.5 s.
    assert SOFT_LIMIT <= since("wxrelay_handler_seconds_sum", handler="async_slow") < SOFT_LIMIT + 0.5
    assert 1.5 <= since("wxrelay_handler_seconds_sum", handler="slow") < 2.5
    assert since("wxrelay_handler_seconds_bucket", handler="slow", le="1.0") == 0
    assert since("wxrelay_handler_seconds_bucket", handler="slow", le="2.5") == 1
    assert worker.metric("wxrelay_handlers_in_flight", account="default") == 0
    # The slow reply missed the delivery: its late send is done before the next test counts its own.
    wait_until(lambda: since("wxrelay_late_sends_total", result="sent") == 1, 10, "the slow reply sent late")
    assert int(own_redis.client().hget("wxrelay:stats", "late_sent") or 0) >= 1  # the Redis stats, as before


def test_late_sends_by_result_and_errcode_and_token_fetches_and_refreshes(worker, relay, api):
    since = Since(worker)
    sim = wechat(relay)
    api.fail_next(45015)  # out of the 48-hour window: refused
    api.fail_next(48001)  # no customer-service API: kept for the user's next message
    api.fail_next(-1)  # busy: tried again 2 s later, and sent
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda who: sim.say(f"slow {LATE}", user=user(who)), ("a", "b", "c")))
    wait_until(lambda: since("wxrelay_late_sends_total") == 4, 15, "four late attempts", 0.05)
    assert since("wxrelay_late_sends_total", account="default", result="refused", errcode="45015") == 1
    assert since("wxrelay_late_sends_total", account="default", result="pickup", errcode="48001") == 1
    assert since("wxrelay_late_sends_total", account="default", result="retried", errcode="-1") == 1
    assert since("wxrelay_late_sends_total", account="default", result="sent", errcode="0") == 1
    # One fetch for every send of this module so far: the token is shared through Redis.
    assert worker.metric("wxrelay_token_fetches_total", account="default", result="ok", errcode="0") == 1
    assert worker.metric("wxrelay_token_refreshes_total") == 0
    # WeChat refuses the token (40001) and stable_token hands it back: a plain fetch, then a forced one.
    api.revoke_stable_token()
    sim.say(f"slow {LATE}", user=user("revoked"))
    wait_until(lambda: since("wxrelay_late_sends_total", result="sent") == 2, 15, "the send on a new token", 0.05)
    assert since("wxrelay_late_sends_total") == 5
    assert worker.metric("wxrelay_token_fetches_total", result="ok") == 3
    assert worker.metric("wxrelay_token_refreshes_total", account="default", reason="invalid") == 1
    assert worker.metric("wxrelay_token_fetches_total", result="error") == 0


def test_the_queue_depth_and_its_oldest_message_age_are_read_at_each_scrape(log_dir, stack_env, api):
    # A stack of its own: one thread, busy with a slow handler, so that the next messages wait; then its Redis goes.
    server = RedisServer(log_dir)
    env = {
        **stack_env, "WXRELAY_REDIS_URL": server.url, "WECHAT_API_BASE": api.base_url, "WXRELAY_DELIVERIES": "1",
        "WXRELAY_WORKER_CONCURRENCY": "1", "WXRELAY_QUEUE": "waiting",
    }  # fmt: skip
    busy = Worker(log_dir, env, "queue0", server, metrics_port=free_port())
    relay = RelayProcess(log_dir, env)
    threads: list[threading.Thread] = []
    try:
        assert 'wxrelay_queue_depth{account="default"} 0.0' in busy.metrics()
        assert 'wxrelay_queue_oldest_seconds{account="default"} 0.0' in busy.metrics()
        sim = wechat(relay)
        threads += in_background(lambda: sim.say("slow 3", user=user("busy")))
        wait_until(lambda: busy.metric("wxrelay_handlers_in_flight") == 1, 10, "the thread taken", 0.05)
        queued = time.time()
        threads += in_background(*(lambda who=who: sim.say("hello", user=user(who)) for who in ("w1", "w2")))
        wait_until(lambda: busy.metric("wxrelay_queue_depth", account="default") == 2, 5, "two waiting", 0.05)
        # The oldest ages while it waits, by the time its relay queued it.
        wait_until(lambda: busy.metric("wxrelay_queue_oldest_seconds") >= 1, 5, "a second of waiting", 0.05)
        assert busy.metric("wxrelay_queue_oldest_seconds", account="default") <= time.time() - queued + 0.01
        wait_until(lambda: busy.metric("wxrelay_queue_depth") == 0, 10, "the queue drained", 0.1)
        assert busy.metric("wxrelay_queue_oldest_seconds") == 0
        for thread in threads:
            thread.join()
        server.stop()
        # Redis gone: a scrape still answers at once, without the queue.
        started = time.monotonic()
        text = busy.metrics()
        assert time.monotonic() - started < 3
        assert "wxrelay_queue_depth{" not in text and "wxrelay_handler_outcomes_total{" in text
    finally:
        for thread in threads:
            thread.join()
        relay.stop()
        busy.stop()
        server.stop()


def test_a_prefork_worker_serves_the_sum_of_its_children(log_dir, env, own_redis):
    env = {
        **env,
        "WXRELAY_QUEUE": "prefork-metrics",
        "WXRELAY_WORKER_POOL": "prefork",
        "WXRELAY_WORKER_CONCURRENCY": "2",
    }
    folders = set(glob.glob(os.path.join(tempfile.gettempdir(), "wxrelay-metrics-*")))
    prefork = Worker(log_dir, env, "prefork0", own_redis, metrics_port=free_port())
    relay = RelayProcess(log_dir, env)
    try:
        made = set(glob.glob(os.path.join(tempfile.gettempdir(), "wxrelay-metrics-*"))) - folders
        assert made, "the worker keeps its children's metrics in a folder of its own"
        sim = wechat(relay)
        # The soft limit interrupts a sync handler in a child process: timed out.
        stuck = in_background(lambda: sim.say("slow 30", user=user("stuck")))
        assert sim.say("hello", user=user("child")).text == "echo: hello"
        stuck[0].join()
        outcomes = "wxrelay_handler_outcomes_total"
        wait_until(lambda: prefork.metric(outcomes, outcome="timed_out") == 1, 10, "the timeout counted", 0.05)
        assert prefork.metric(outcomes, account="default", outcome="replied") == 1
        assert prefork.metric(outcomes) == 2
        assert prefork.metric("wxrelay_handler_seconds_count", account="default", handler="slow") == 1
        assert prefork.metric("wxrelay_handlers_in_flight", account="default") == 0
        assert 'wxrelay_queue_depth{account="default"} 0.0' in prefork.metrics()
    finally:
        relay.stop()
        prefork.stop()
    assert not any(os.path.exists(folder) for folder in made)


def test_a_metrics_port_taken_is_said_once_and_the_worker_runs_on(log_dir, env, own_redis):
    env = {**env, "WXRELAY_QUEUE": "metrics-squatted"}
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        squatted = Worker(log_dir, env, "squatted0", own_redis, metrics_port=port)
        try:
            said = [line for line in squatted.log().splitlines() if "no /metrics" in line]
            assert len(said) == 1 and f"port {port} on 127.0.0.1 cannot be used" in said[0], said
            client = Celery("metrics-client", broker=own_redis.url, backend=own_redis.url)
            client.conf.update(task_serializer="json", accept_content=["json"], result_accept_content=["json"])
            xml = to_xml(text_message("hello", user="o_squatted", account="gh_a"))
            assert "echo: hello" in client.send_task("wxrelay.handle", args=[xml], queue=env["WXRELAY_QUEUE"]).get(10)
            client.close()
        finally:
            squatted.stop()


def test_a_message_no_handler_matched_counts_under_handler_none(own_redis):
    account = f"unrouted{uuid.uuid4().hex[:8]}"
    xml = to_xml(event_message("subscribe", user="o_unrouted", account="gh_a"))
    assert handle(xml, Bot(), own_redis.client(), 60, 5, account=account).xml == ""
    assert REGISTRY.get_sample_value("wxrelay_handler_seconds_count", {"account": account, "handler": "none"}) == 1
    assert REGISTRY.get_sample_value("wxrelay_handler_outcomes_total", {"account": account, "outcome": "no_reply"}) == 1
