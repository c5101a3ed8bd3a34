"""The appserver's task, called by name on a real worker, as the relay and any other client would."""

from __future__ import annotations

import json

import pytest
from celery import Celery

from relay.celery_message import task_message
from simulator.messages import event_message, text_message, to_xml
from tests.services import Worker, wait_until
from wechat.parser import parse_xml


@pytest.fixture(scope="module")
def client(redis_server, worker):
    app = Celery("test-client", broker=redis_server.url, backend=redis_server.url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_accept_content=["json"])
    yield app
    app.close()


def call(client, xml: str) -> str:
    return client.send_task("wxrelay.handle", args=[xml], queue="wxrelay").get(timeout=20)


def test_text_handler_runs_on_the_worker(client):
    reply = parse_xml(call(client, to_xml(text_message("hi", user="o_u", account="gh_a"))))
    assert reply == {**reply, "ToUserName": "o_u", "FromUserName": "gh_a", "MsgType": "text", "Content": "echo: hi"}


def test_event_handler_and_fallback_run_on_the_worker(client):
    assert parse_xml(call(client, to_xml(event_message("subscribe", user="o_u", account="gh_a"))))["Content"] == (
        "welcome"
    )
    unknown = to_xml({"ToUserName": "gh_a", "FromUserName": "o_u", "CreateTime": "1", "MsgType": "miniprogrampage"})
    assert parse_xml(call(client, unknown))["Content"] == "fallback: miniprogrampage"


def test_a_raising_handler_yields_no_reply(client, worker):
    assert call(client, to_xml(text_message("boom", user="o_u", account="gh_a"))) == ""
    assert "handler boom failed on message msg:" in worker.log()


def test_the_worker_refuses_pickle(client, worker):
    client.send_task("wxrelay.handle", args=["<xml/>"], queue="wxrelay", serializer="pickle")
    wait_until(lambda: "Refusing to deserialize untrusted content of type pickle" in worker.log(), 10, "the refusal")


def test_the_relay_envelope_matches_celerys_own(client):
    ours = json.loads(task_message("wxrelay.handle", ["<xml/>", "k"], "wxrelay"))
    theirs = client.amqp.as_task_v2("some-id", "wxrelay.handle", args=["<xml/>", "k"])
    assert set(theirs.headers) - {"stamped_headers", "stamps", "replaced_task_nesting"} <= set(ours["headers"])
    assert ours["properties"]["delivery_info"]["routing_key"] == "wxrelay"
    assert ours["content-type"] == "application/json"


def test_a_prefork_worker_enforces_the_time_limit(log_dir, stack_env, redis_server):
    env = {
        **stack_env,
        "WXRELAY_QUEUE": "prefork",
        "WXRELAY_WORKER_POOL": "prefork",
        "WXRELAY_WORKER_CONCURRENCY": "1",
        "WXRELAY_TASK_SOFT_TIME_LIMIT": "1",
        "WXRELAY_TASK_TIME_LIMIT": "10",
    }
    prefork = Worker(log_dir, env, "prefork", redis_server)
    try:
        app = Celery("prefork-client", broker=redis_server.url, backend=redis_server.url)
        app.conf.update(task_serializer="json", accept_content=["json"], result_accept_content=["json"])
        xml = to_xml(text_message("slow 30", user="o_u", account="gh_a"))
        # The soft limit interrupts the handler after 1 s: no reply instead of a 30 s wait.
        assert app.send_task("wxrelay.handle", args=[xml], queue="prefork").get(timeout=20) == ""
        assert "SoftTimeLimitExceeded" in prefork.log()
        app.close()
    finally:
        prefork.stop()
