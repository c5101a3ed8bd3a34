"""WXRELAY_LOG_FORMAT=json: one JSON object a line from a real relay and a real worker, the fields of a
line about a message, no secret in any; text stays as it was; a format it does not know stops a process."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from common.log_format import JsonFormatter, about, install
from common.redaction import MASK, Redactor
from common.settings import Settings
from simulator import WeChatSimulator
from simulator.messages import new_msg_id
from tests.conftest import AES_KEY, APPID, SECRET, TOKEN, WECHAT_TIMEOUT
from tests.services import Process, RedisServer, RelayProcess, Worker, free_port, wait_until
from wechat.exceptions import InvalidConfigError

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def records(text: str) -> list[dict[str, Any]]:
    """Every line of a log as the JSON object it must be."""
    parsed = []
    for line in text.splitlines():
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(parsed[-1], dict), line
    return parsed


def strings(value: object) -> Iterator[str]:
    """Every string a decoded line holds, however it was escaped."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def assert_no_secret(text: str, secrets: list[str]) -> None:
    decoded = [s for record in records(text) for s in strings(record)]
    for secret in secrets:
        assert secret not in text and json.dumps(secret)[1:-1] not in text, secret
        assert not any(secret in s for s in decoded), secret


def test_a_line_is_one_json_object_with_the_fields_of_its_message():
    secret = 'pa"ss\\wörd-42'
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(Redactor([secret]))
    logger = logging.getLogger(f"log-format-{id(stream)}")
    logger.addHandler(handler)
    logger.propagate = False
    started = time.monotonic() - 0.25
    try:
        raise ValueError(f"two\nlines and the {secret}")
    except ValueError:
        logger.exception(
            "handler %s failed on message %s", "boom", "shop/msg:42", extra=about("shop/msg:42", "raised", started)
        )
    logger.warning("你好 %s", secret)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    failure, greeting = (json.loads(line) for line in lines)
    assert ISO_UTC.match(failure["time"])
    logged_at = datetime.strptime(failure["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - logged_at).total_seconds()) < 5
    assert {k: failure[k] for k in ("level", "logger", "process", "pid", "message")} == {
        "level": "ERROR",
        "logger": logger.name,
        "process": "MainProcess",
        "pid": os.getpid(),
        "message": "handler boom failed on message shop/msg:42",
    }
    assert (failure["key"], failure["account"], failure["outcome"]) == ("shop/msg:42", "shop", "raised")
    assert 250 <= failure["duration_ms"] < 5000
    assert (
        failure["exception"].startswith("Traceback")
        and f"ValueError: two\nlines and the {MASK}" in failure["exception"]
    )
    # A line about no message has none of a message's fields; its text is kept whole.
    assert greeting["message"] == f"你好 {MASK}" and not {"key", "account", "outcome", "duration_ms"} & set(greeting)
    assert_no_secret(stream.getvalue(), [secret])


def test_text_mode_keeps_a_process_own_format():
    handler = logging.StreamHandler(io.StringIO())
    text = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    handler.setFormatter(text)
    logger = logging.getLogger(f"log-format-text-{id(handler)}")
    logger.addHandler(handler)
    install("text", logger)
    assert handler.formatter is text
    install("json", logger)
    assert isinstance(handler.formatter, JsonFormatter)


def test_text_lines_read_as_before(start_relay, worker):
    relay = start_relay()
    sim = WeChatSimulator(relay.callback, TOKEN, APPID, AES_KEY, mode="safe", deadline=WECHAT_TIMEOUT)
    msg_id = new_msg_id()
    sim.say("boom", MsgId=msg_id)
    failure = f"handler boom failed on message msg:{msg_id}"
    wait_until(lambda: failure in worker.log(), 20, "the handler's failure in the worker's log")
    # Celery's format for the worker, the relay's own: the message's fields add nothing to the text.
    line = next(line for line in worker.log().splitlines() if failure in line)
    assert re.fullmatch(rf"\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}}: ERROR/MainProcess\] {failure}", line), line
    after = worker.log().split(line, 1)[1].lstrip("\n")
    assert after.startswith("Traceback (most recent call last):")
    listening = f"INFO wxrelay.relay: relay listening on 127.0.0.1:{relay.port}"
    assert re.search(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} {listening}$", relay.log(), re.M), relay.log()


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_json_lines_from_a_relay_and_a_worker(log_dir, stack_env, wechat_api, level):
    # A Redis of its own: no other test's worker sweeps this one's late reply.
    redis_server = RedisServer(log_dir, password=f"json-{level}-pass")
    queue = f"jsonlogs{redis_server.port}"
    env = {
        **stack_env,
        "WXRELAY_REDIS_URL": redis_server.url,
        "WXRELAY_QUEUE": queue,
        "WXRELAY_LOG_FORMAT": "json",
        "WXRELAY_LOG_LEVEL": level,
    }
    worker = relay = None
    try:
        worker = Worker(log_dir, env, queue, redis_server)
        relay = RelayProcess(log_dir, env)
        sim = WeChatSimulator(relay.callback, TOKEN, APPID, AES_KEY, mode="safe", deadline=WECHAT_TIMEOUT)
        replied_id = new_msg_id()
        assert sim.say("hi", MsgId=replied_id).text == "echo: hi"
        failed_id = new_msg_id()
        sim.say("boom", MsgId=failed_id)
        # A reply that misses WeChat's one delivery goes late, by the customer-service API.
        once = WeChatSimulator(
            relay.callback, TOKEN, APPID, AES_KEY, mode="safe", deadline=WECHAT_TIMEOUT, deliveries=1
        )
        late_id, user = new_msg_id(), f"o_{queue}"
        once.say("slow 1.5", MsgId=late_id, user=user)
        wait_until(lambda: f"msg:{late_id} sent through" in worker.log(), 30, "the late send in the worker's log")
        assert [m["text"]["content"] for m in wechat_api.sends_to(user)] == ["slow reply to slow 1.5"]
        wait_until(lambda: f"msg:{failed_id}" in worker.log(), 10, "the handler's failure in the worker's log")
    finally:
        for process in (relay, worker, redis_server):
            if process is not None:
                process.stop()

    worker_lines, relay_lines = records(worker.log()), records(relay.log())
    failure = next(r for r in worker_lines if r["message"] == f"handler boom failed on message msg:{failed_id}")
    assert (failure["level"], failure["key"], failure["account"], failure["outcome"]) == (
        "ERROR", f"msg:{failed_id}", "default", "raised"
    )  # fmt: skip
    assert failure["duration_ms"] >= 0 and ISO_UTC.match(failure["time"])
    assert "RuntimeError: the handler failed on purpose" in failure["exception"]
    late = next(r for r in worker_lines if r["message"].startswith(f"late reply to msg:{late_id} sent"))
    assert (late["key"], late["account"], late["outcome"]) == (f"msg:{late_id}", "default", "sent")
    # A line a message only at DEBUG: what came of it, and how long it took.
    about_replied = [r for lines in (worker_lines, relay_lines) for r in lines if r.get("key") == f"msg:{replied_id}"]
    if level == "DEBUG":
        assert {(r["logger"], r["outcome"]) for r in about_replied} == {
            ("wxrelay.appserver", "replied"),
            ("wxrelay.relay", "passive"),
        }
        assert all(r["duration_ms"] >= 0 and r["account"] == "default" for r in about_replied)
    else:
        assert about_replied == []
    # Celery's own lines, its banner's facts among them, and its stop.
    celery = [r["message"] for r in worker_lines if r["logger"] == "celery.apps.worker"]
    assert any(m.endswith(" ready.") for m in celery) and any("[queues]" in m and queue in m for m in celery)
    assert any(m.endswith(" stopped") for m in celery)
    assert any(r["message"] == f"relay listening on 127.0.0.1:{relay.port}" for r in relay_lines)
    secrets = [TOKEN, AES_KEY, SECRET, redis_server.password, *wechat_api.issued_tokens]
    for process in (worker, relay):
        assert_no_secret(process.log(), secrets)


def test_a_log_format_it_does_not_know_stops_a_relay_and_a_worker_with_one_line(log_dir, stack_env):
    env = {**stack_env, "WXRELAY_LOG_FORMAT": "xml"}
    line = "configuration error: WXRELAY_LOG_FORMAT='xml' is invalid: must be text or json"
    port = free_port()
    relay = Process(f"relay-{port}", [sys.executable, "-m", "relay", "--port", str(port)], log_dir, env)
    celery = [sys.executable, "-m", "celery", "-A", "appserver", "worker", "-n", f"xml{port}@%h", "--without-mingle"]
    worker = Process(f"worker-xml{port}", celery, log_dir, env)
    for process in (relay, worker):
        assert process.popen.wait(60) == 2
        process.stop()
    assert relay.log().strip().splitlines() == [f"wxrelay relay: {line}"]
    # Celery may warn first (run as root), then the one line, and no traceback.
    assert worker.log().strip().splitlines()[-1] == f"wxrelay worker: {line}"
    assert "Traceback" not in worker.log() and worker.log().count("configuration error") == 1


def test_a_log_level_is_one_logging_knows():
    assert Settings.from_env({"WXRELAY_LOG_LEVEL": "debug"}, env_file=os.devnull).log_level == "DEBUG"
    with pytest.raises(InvalidConfigError, match="WXRELAY_LOG_LEVEL='verbose' is invalid"):
        Settings.from_env({"WXRELAY_LOG_LEVEL": "verbose"}, env_file=os.devnull)
