"""kombu's records of held messages, queued on the event loop's thread, written once a turn (appserver/unacked.py)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection
from kombu.asynchronous import Hub, get_event_loop, set_event_loop

from appserver import unacked
from relay.celery_message import task_message
from tests.services import RedisServer, wait_until

INDEX, RECORDS, QUEUE = "test:unacked:index", "test:unacked:records", "test:unacked:queue"


@pytest.fixture
def channel(redis_server: RedisServer) -> Iterator[Any]:
    options = {"unacked_key": RECORDS, "unacked_index_key": INDEX}
    connection = Connection(redis_server.url, transport_options=options)
    hub, before = Hub(), get_event_loop()
    hub._loop_thread = threading.get_ident()  # as create_loop() sets it: this thread runs the loop
    set_event_loop(hub)
    chan = connection.channel()
    try:
        yield chan
    finally:
        chan.close()
        set_event_loop(before)
        connection.release()
        redis_server.client().delete(INDEX, RECORDS, QUEUE)


def _message(chan: Any, tag: str) -> tuple[Any, dict[str, Any]]:
    """A message as the BRPOP read parses it."""
    payload = unacked._loads(task_message("wxrelay.handle", ["<xml/>", "msg:1"], QUEUE, delivery_tag=tag))
    return chan.Message(payload, channel=chan), payload


def _tick(chan: Any) -> None:
    for callback in list(get_event_loop().on_tick):
        callback()


def test_a_record_is_written_at_the_turn_as_kombu_writes_it_and_removed_after(
    channel: Any, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    message, payload = _message(channel, "tag-1")
    channel.qos.append(message, "tag-1")
    assert channel.qos._delivered["tag-1"] is message  # kombu's own bookkeeping, at once
    assert client.hget(RECORDS, "tag-1") is None  # Redis's, at the loop's next turn
    _tick(channel)
    wait_until(lambda: client.hget(RECORDS, "tag-1") is not None, 5, "the record")
    assert json.loads(client.hget(RECORDS, "tag-1")) == [payload, "", QUEUE]
    assert client.zscore(INDEX, "tag-1") is not None
    channel.qos.ack("tag-1")
    _tick(channel)
    wait_until(lambda: client.hget(RECORDS, "tag-1") is None and client.zscore(INDEX, "tag-1") is None, 5, "removal")


def test_a_typed_value_is_still_parsed_by_kombus_hook() -> None:
    assert unacked._loads('{"at": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05"}}')["at"].year == 2024


def test_a_message_given_back_finds_its_record_written(channel: Any, redis_server: RedisServer) -> None:
    message, payload = _message(channel, "tag-2")
    channel.qos.append(message, "tag-2")
    channel.qos.reject("tag-2", requeue=True)  # no turn in between: the reject writes the record first
    queued = redis_server.client().lrange(QUEUE, 0, -1)
    redis_server.client().delete(QUEUE)
    assert any(json.loads(item)["properties"]["delivery_tag"] == "tag-2" for item in queued)


def test_a_message_given_back_goes_to_the_front_of_the_line(channel: Any, redis_server: RedisServer) -> None:
    # The ledger's sweep looks for a task given back among a queue's oldest (common/ledger.py's SWEEP_DUE).
    client = redis_server.client()
    client.lpush(QUEUE, "queued before", "queued after")
    message, _ = _message(channel, "tag-5")
    channel.qos.append(message, "tag-5")
    channel.qos.reject("tag-5", requeue=True)
    queued = client.lrange(QUEUE, 0, -1)
    client.delete(QUEUE)
    assert queued[:2] == [b"queued after", b"queued before"]
    assert json.loads(queued[2])["properties"]["delivery_tag"] == "tag-5"  # the right end: taken next
    assert client.hget(RECORDS, "tag-5") is None and client.zscore(INDEX, "tag-5") is None


def test_an_error_among_the_replies_is_logged(
    channel: Any, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.client().set("test:unacked:text", "not a number")
    message, _ = _message(channel, "tag-3")
    channel.qos.append(message, "tag-3")
    writer = unacked.writer(channel)
    assert writer is not None
    writer.queue("INCR", "test:unacked:text")
    with caplog.at_level(logging.WARNING, logger="wxrelay.appserver"):
        writer.flush()
    assert "was refused" in caplog.text and "not an integer" in caplog.text
    assert redis_server.client().hget(RECORDS, "tag-3") is not None  # the others in the turn were written
    channel.qos.ack("tag-3")
    writer.flush()


def test_outside_the_loops_thread_kombus_own_writes_run(channel: Any, redis_server: RedisServer) -> None:
    message, _ = _message(channel, "tag-4")
    done = threading.Event()

    def elsewhere() -> None:
        channel.qos.append(message, "tag-4")
        done.set()

    threading.Thread(target=elsewhere).start()
    done.wait(5)
    assert redis_server.client().hget(RECORDS, "tag-4") is not None  # written before append returned
    channel.qos.ack("tag-4")
