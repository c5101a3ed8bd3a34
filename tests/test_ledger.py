"""The ledger's transitions against a real Redis: each owned by the one caller that made it.

Each test has its own record, queue, unacknowledged hash and due set: the
suite's workers, on the same Redis, sweep only the appliance's own."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from common import ledger

TTL, SETTLED = 600, 20


class Ledger:
    """The scripts as relays and workers call them, on a key of the test's own."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.key = f"test:{uuid.uuid4().hex}"
        self.record = ledger.record_key(self.key)
        self.queue, self.unacked, self.tag = f"{self.key}:queue", f"{self.key}:unacked", f"tag-{self.key}"
        # A due set of its own: the suite's workers sweep the real one.
        self.due_key = f"{self.key}:due"
        self.task = f"task of {self.key}"
        self.pickup = f"{self.key}:pickup"

    def run(self, source: str, keys: list[str], args: list[object]) -> object:
        result = self.client.register_script(source)(keys=keys, args=args)
        return _decode(result)

    def claim(self, answered: bool = False, due_after: float = 30, reply_to: str | None = None) -> list[object]:
        keys = [self.record, self.queue, self.due_key]
        args = [TTL, self.task, due_after, int(answered), self.key, self.tag] + ([reply_to] if reply_to else [])
        return self.run(ledger.CLAIM, keys, args)  # type: ignore[return-value]

    def complete(self, reply: str = "<xml/>", cs: str = '{"touser": "u"}') -> str:
        args = [reply, cs, "test:channel", "notice", TTL, self.key]
        return self.run(ledger.COMPLETE, [self.record, self.due_key, self.pickup], args)  # type: ignore[return-value]

    def complete_carrying(self, reply: str, entries: list[str], leftover: str = "") -> str:
        args = [reply, '{"touser": "u"}', "test:channel", "notice", TTL, self.key, TTL, *entries, leftover]
        keys = [self.record, self.due_key, self.pickup]
        return self.run(ledger.PICKUP_COMPLETE, keys, args)  # type: ignore[return-value]

    def keep(self) -> str:
        keys = [self.record, self.due_key, self.pickup]
        return self.run(ledger.KEEP, keys, [TTL, SETTLED, self.key])  # type: ignore[return-value]

    @property
    def kept(self) -> list[str]:
        return [entry.decode() for entry in self.client.lrange(self.pickup, 0, -1)]

    def take(self) -> str:
        return self.run(ledger.TAKE, [self.record, self.due_key], [SETTLED, self.key])  # type: ignore[return-value]

    def abandon(self) -> list[str]:
        return self.run(ledger.ABANDON, [self.record, self.due_key], [SETTLED, self.key])  # type: ignore[return-value]

    def begin(self) -> list[str]:
        return self.run(ledger.BEGIN_SEND, [self.record, self.due_key], [self.key])  # type: ignore[return-value]

    def end(self, outcome: str, errcode: int = 0, delay: int = 0) -> int:
        keys = [self.record, self.due_key]
        args = [outcome, errcode, delay, SETTLED, self.key]
        return self.run(ledger.END_SEND, keys, args)  # type: ignore[return-value]

    def make_due(self) -> None:
        self.client.zadd(self.due_key, {self.key: 0})

    def sweep(self) -> list[str]:
        args = [ledger.RECORD_PREFIX, 1000, SETTLED, self.queue, self.unacked]
        owed = self.run(ledger.SWEEP_DUE, [self.due_key], args)
        return [key for key in owed if key == self.key]  # type: ignore[union-attr]

    @property
    def state(self) -> str | None:
        raw = self.client.hget(self.record, "state")
        return raw.decode() if raw else None

    @property
    def due(self) -> float | None:
        return self.client.zscore(self.due_key, self.key)


def _decode(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


@pytest.fixture
def book(redis_server) -> Ledger:
    return Ledger(redis_server.client())


def test_a_claim_records_queues_and_sets_the_due_time_once(book):
    assert book.claim() == ["new", 1, ""]
    assert book.state == "pending" and book.due is not None
    assert book.claim()[:2] == ["pending", 2]
    assert book.client.lrange(book.queue, 0, -1) == [book.task.encode()]


def test_a_passive_reply_is_taken_once_and_the_record_then_lives_only_the_retry_window(book):
    book.claim()
    assert book.complete() == "done"
    assert book.take() == "done" and book.state == "taken"
    assert book.due is None and 0 < book.client.ttl(book.record) <= SETTLED
    assert book.client.hget(book.record, "cs") is None
    # A retry of the message is served the same reply; the sweep has nothing to do.
    assert book.claim()[0] == "taken"
    book.make_due()
    assert book.sweep() == [] and book.state == "taken"


def test_the_sweep_hands_an_untaken_reply_to_exactly_one_late_send(book):
    book.claim()
    book.complete()
    book.make_due()
    assert book.sweep() == [book.key] and book.state == "late"
    # A delivery that got the notice too late may not write it.
    assert book.take() == "late"
    assert book.begin() == ["late", '{"touser": "u"}'] and book.state == "sending"
    # A second task (a redelivery, a sweep's second offer) sends nothing.
    assert book.begin() == ["sending", ""]
    assert book.end("sent") == 1 and book.state == "sent"
    assert book.begin() == ["sent", ""]
    assert 0 < book.client.ttl(book.record) <= SETTLED


def test_a_late_reply_whose_task_was_lost_is_offered_again(book):
    book.claim()
    book.abandon()
    assert book.complete() == "late"
    assert book.due is not None  # the sweep will look again if no send begins
    book.make_due()
    assert book.sweep() == [book.key]
    assert book.begin()[0] == "late" and book.due is None


def test_a_second_complete_never_owns_the_reply(book):
    book.claim()
    assert book.abandon() == ["abandoned", ""]
    assert book.complete() == "late"
    assert book.complete() == "already:late"
    book.begin()
    assert book.complete() == "already:sending"


def test_a_complete_on_a_missing_record_leaves_a_tombstone(book):
    assert book.complete() == "late"
    assert book.state == "late" and book.client.ttl(book.record) > 0
    assert book.complete() == "already:late"


def test_a_handler_with_no_reply_settles_silently(book):
    book.claim()
    book.abandon()
    assert book.complete(reply="", cs="") == "silent"
    book.make_due()
    assert book.sweep() == [] and book.state == "silent"


def test_a_message_still_running_when_due_is_abandoned_and_its_reply_goes_late(book):
    book.claim()
    book.make_due()
    assert book.sweep() == [] and book.state == "abandoned"
    assert book.complete() == "late"


def test_a_send_to_retry_goes_back_to_late_and_is_due_after_its_delay(book):
    book.claim()
    book.abandon()
    book.complete()
    book.begin()
    now = float(book.client.time()[0])
    assert book.end("retry", errcode=-1, delay=30) == 1
    assert book.state == "late" and book.due is not None and book.due >= now + 30
    assert book.client.hget(book.record, "attempts") == b"1"
    assert book.begin()[0] == "late"
    assert book.end("refused", errcode=48001) == 1
    assert book.state == "refused" and book.client.hget(book.record, "errcode") == b"48001"
    assert book.end("sent") == 0  # only the owner of `sending` ends it


def test_a_replayed_spooled_message_starts_abandoned_and_a_known_one_is_left_alone(book):
    assert book.claim(answered=True) == ["new", 1, ""]
    assert book.state == "abandoned"
    assert book.claim(answered=True) == ["replayed", 0, ""]
    assert book.complete() == "late"


def test_a_task_lost_with_its_worker_is_queued_again_and_one_held_or_queued_is_not(book):
    book.claim()
    book.make_due()
    # Still queued: left alone, looked at again later.
    assert book.sweep() == [] and book.state == "abandoned" and book.due is not None
    assert book.client.llen(book.queue) == 1
    # Given back by kombu, rewritten (redelivered) but with its tag: still queued.
    book.client.lset(book.queue, 0, f"redelivered {book.task} {book.tag}")
    book.make_due()
    book.sweep()
    assert book.client.llen(book.queue) == 1 and book.client.hget(book.record, "suspect") is None
    # Taken by a worker that recorded it as unacknowledged: held, left alone.
    book.client.rpop(book.queue)
    book.client.hset(book.unacked, book.tag, "held")
    book.make_due()
    assert book.sweep() == [] and book.client.llen(book.queue) == 0
    # Taken by a worker that died before recording it: nowhere but in the ledger.
    # Suspect first (a live worker records it within milliseconds), then queued again.
    book.client.hdel(book.unacked, book.tag)
    book.make_due()
    book.sweep()
    assert book.client.llen(book.queue) == 0 and book.client.hget(book.record, "suspect") == b"1"
    book.make_due()
    book.sweep()
    assert book.client.lrange(book.queue, 0, -1) == [book.task.encode()]
    assert book.client.hget(book.record, "suspect") is None
    # Once a reply is stored the ledger lets go of the task.
    assert book.complete() == "late"
    assert book.client.hget(book.record, "task") is None


def test_a_suspect_found_held_on_the_second_look_is_not_queued_again(book):
    book.claim()
    book.client.rpop(book.queue)
    book.make_due()
    book.sweep()
    assert book.client.hget(book.record, "suspect") == b"1"
    book.client.hset(book.unacked, book.tag, "held")  # the worker was alive, only a moment slow
    book.make_due()
    book.sweep()
    assert book.client.llen(book.queue) == 0 and book.client.hget(book.record, "suspect") is None


def task_text(tag: str, queued_at: float) -> str:
    """A task as a relay queues it, as far as the sweep reads it: its tag, and when it was queued."""
    return json.dumps({"headers": {ledger.QUEUED_AT: queued_at}, "properties": {"delivery_tag": tag}})


def queue_behind(book: Ledger, count: int, since: float) -> None:
    """`count` tasks of others, queued after `since` (pushed on the left, as kombu and the relays push)."""
    texts = [task_text(f"other-{book.key}-{n}", since + 1 + n / 1000) for n in range(count)]
    for start in range(0, count, 1000):
        book.client.lpush(book.queue, *texts[start : start + 1000])


BACKLOG = ledger.QUEUE_SCAN + 500


def test_a_task_taken_from_the_end_of_a_long_queue_and_lost_is_found_at_the_first_look(book):
    queued_at = time.time()
    book.task = task_text(book.tag, queued_at)
    book.claim()
    queue_behind(book, BACKLOG, queued_at)
    book.make_due()
    book.sweep()
    assert book.client.hget(book.record, "suspect") is None  # the oldest, still queued
    # Taken from the right end by a worker that died before recording it: every task left was queued after it.
    assert book.client.rpop(book.queue) == book.task.encode()
    book.make_due()
    book.sweep()
    assert book.client.hget(book.record, "suspect") == b"1"
    book.make_due()
    book.sweep()
    # Queued again at the front of the line: the next task a worker takes.
    assert book.client.lindex(book.queue, -1) == book.task.encode()
    assert book.client.llen(book.queue) == BACKLOG + 1


def test_a_task_behind_a_long_queue_or_given_back_to_its_oldest_end_is_left_alone(book):
    queued_at = time.time()
    queue_behind(book, BACKLOG, queued_at - 10)
    book.task = task_text(book.tag, queued_at)
    book.claim()  # behind the backlog: beyond the oldest QUEUE_SCAN, never read
    book.make_due()
    book.sweep()
    book.make_due()
    book.sweep()
    assert book.client.hget(book.record, "suspect") is None and book.client.llen(book.queue) == BACKLOG + 1
    # Given back by kombu, rewritten, on the right end, with a backlog queued since: found by its tag.
    assert book.client.lpop(book.queue) == book.task.encode()
    book.client.rpush(book.queue, f"redelivered {book.task}")
    queue_behind(book, BACKLOG, queued_at)
    book.make_due()
    book.sweep()
    assert book.client.hget(book.record, "suspect") is None and book.client.llen(book.queue) == 2 * BACKLOG + 1


def test_a_sweep_behind_a_backlog_of_ten_thousand_reads_no_long_queue(book):
    backlog, started = 10_000, time.time()
    claim = book.client.register_script(ledger.CLAIM)
    with book.client.pipeline(transaction=False) as pipe:
        for n in range(backlog):
            key = f"{book.key}/{n}"
            text = task_text(f"tag-{key}", started + n / 1000)
            args = [TTL, text, 0, 0, key, f"tag-{key}"]
            claim(keys=[ledger.record_key(key), book.queue, book.due_key], args=args, client=pipe)
        pipe.execute()

    def calls(command: str) -> int:
        return int(book.client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))

    before = {command: calls(command) for command in ("lrange", "lpos", "lindex")}
    began = time.perf_counter()
    swept = 0
    while swept < backlog:
        book.run(ledger.SWEEP_DUE, [book.due_key], [ledger.RECORD_PREFIX, 100, SETTLED, book.queue, book.unacked])
        swept = book.client.zcount(book.due_key, time.time() + 1, "+inf")
    took = time.perf_counter() - began
    made = {command: calls(command) - before[command] for command in before}
    print(f"swept {backlog} due messages behind a backlog of {backlog} in {took * 1000:.0f} ms: {made}")
    # Each looked at once and left queued; only the oldest QUEUE_SCAN were looked for, each within them.
    assert book.client.llen(book.queue) == backlog
    assert not any(book.client.hget(ledger.record_key(f"{book.key}/{n}"), "suspect") for n in (0, 5000, 9999))
    assert made["lrange"] == 0 and made["lpos"] == ledger.QUEUE_SCAN and made["lindex"] <= backlog // 100


def test_the_notice_goes_to_the_relay_of_the_latest_delivery_or_else_to_every_relay(book):
    pubsub = book.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("test:channel", f"{book.key}:relay-a", f"{book.key}:relay-b")
    book.claim(reply_to=f"{book.key}:relay-a")
    book.claim(reply_to=f"{book.key}:relay-b")  # WeChat's retry reached another relay
    assert book.complete() == "done"
    other = Ledger(book.client)
    other.claim()  # a relay that names no channel of its own
    assert other.complete() == "done"
    got: list[str] = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)  # None for a subscription's confirmation too
        if message is not None:
            got.append(message["channel"].decode())
    pubsub.close()
    assert got == [f"{book.key}:relay-b", "test:channel"]


def test_a_late_reply_is_kept_once_for_the_next_message_which_carries_it_once(book):
    book.claim()
    book.abandon()
    assert book.complete(cs="first") == ledger.LATE
    assert [book.keep(), book.keep()] == [ledger.KEPT, ledger.KEPT]  # a second task keeps nothing more
    assert book.kept == ["first"] and book.state == ledger.KEPT
    assert book.client.ttl(book.pickup) > 0

    # The user's next message: COMPLETE stores nothing while replies are kept; the caller carries them.
    nxt = Ledger(book.client)
    nxt.pickup = book.pickup
    nxt.claim()
    assert nxt.complete() == ledger.PICKUP and nxt.state == ledger.PENDING
    assert nxt.complete_carrying("<both/>", ["stale"]) == "retry"  # another message took them first
    assert nxt.complete_carrying("<both/>", ["first"], leftover="own") == ledger.DONE
    assert book.kept == ["own"] and nxt.state == ledger.DONE

    # No delivery took it after all: the late path keeps it first in line, before the leftover.
    nxt.make_due()
    assert nxt.sweep() == [nxt.key]
    assert nxt.keep() == ledger.KEPT and book.kept == ['{"touser": "u"}', "own"]


def test_a_reply_carrying_kept_ones_is_stored_only_while_a_delivery_waits(book):
    book.client.rpush(book.pickup, "old")
    book.claim()
    book.abandon()
    assert book.complete_carrying("<both/>", ["old"]) == "not-pending"
    assert book.kept == ["old"] and book.complete() == ledger.LATE  # alone, by the late path
    assert book.keep() == ledger.KEPT and book.kept == ["old", '{"touser": "u"}']
