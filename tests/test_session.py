"""`msg.session`: a user's updates are serialised by a lock in Redis, a dead
holder's lock expires, and a bot that never touches its sessions costs no
Redis call. Against a real redis-server, then through a real relay and worker."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter

import pytest
import redis
from redis.connection import Connection

from appserver.bot import Bot
from appserver.handling import handle
from appserver.session import Session, SessionClosed, SessionLockLost, lock_key
from common import ledger
from simulator.messages import new_msg_id, text_message, to_xml
from tests.services import wait_until


def new_user(what: str) -> str:
    return f"o_session_{what}_{uuid.uuid4().hex[:12]}"


def stored(client: redis.Redis, openid: str) -> dict | None:
    raw = client.get(ledger.session_key(openid))
    return json.loads(raw) if raw else None


def count_through(session: Session) -> int:
    """The README's `count` example."""
    session["n"] = session.get("n", 0) + 1
    return session["n"]


def run_together(target, n: int) -> list:
    """`target(i)` in n threads released at once; their results, re-raising any failure."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as exc:  # noqa: B036 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


class CountingConnection(Connection):
    """A real connection that counts what it sends: every command and pipeline goes through here."""

    sent = 0

    def send_packed_command(self, command, check_health=True):
        type(self).sent += 1
        return super().send_packed_command(command, check_health)


@pytest.fixture
def counting_client(redis_server):
    CountingConnection.sent = 0
    pool = redis.ConnectionPool.from_url(redis_server.url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    yield client
    pool.disconnect()


def text_xml(content: str, user: str) -> str:
    return to_xml(text_message(content, user=user, account="gh_session"))


# --- Session against Redis ------------------------------------------------------


def test_twenty_concurrent_updates_of_one_session_all_count(redis_server):
    client, user = redis_server.client(), new_user("threads")

    def one(_: int) -> int:
        session = Session(client, user, 60, lock_ttl=10, lock_wait=10)
        try:
            value = count_through(session)
            session.save()
            return value
        finally:
            session.release()

    values = run_together(one, 20)
    assert stored(client, user) == {"n": 20}
    assert sorted(values) == list(range(1, 21))
    assert not client.exists(lock_key(user))


def test_twenty_concurrent_handlers_count_through_handle(redis_server):
    client, user = redis_server.client(), new_user("handle")
    bot = Bot()

    @bot.text("count")
    def count(msg):
        return f"count={count_through(msg.session)}"

    answers = run_together(lambda _: handle(text_xml("count", user), bot, client, 60, 10, 15), 20)
    assert stored(client, user) == {"n": 20}
    assert sorted(a.customer_service["text"]["content"] for a in answers) == sorted(f"count={i}" for i in range(1, 21))


def test_the_lock_lives_beside_the_session_key_and_only_while_the_handler_runs(redis_server):
    client, user = redis_server.client(), new_user("key")
    assert lock_key(user) == ledger.session_key(user) + ":lock"
    session = Session(client, user, 60, lock_ttl=30, lock_wait=1)
    assert not client.exists(lock_key(user))
    session["x"] = 1
    assert 0 < client.pttl(lock_key(user)) <= 30_000
    session.save()
    assert not client.exists(lock_key(user))
    assert stored(client, user) == {"x": 1}


def test_a_dead_holders_lock_expires_and_the_next_handler_proceeds(redis_server):
    client, user = redis_server.client(), new_user("dead")
    client.set(ledger.session_key(user), json.dumps({"n": 5}))
    # A worker that took the lock and was killed: it never releases.
    dead = client.lock(lock_key(user), timeout=0.5)
    assert dead.acquire(blocking=False)
    session = Session(client, user, 60, lock_ttl=10, lock_wait=10)
    started = time.monotonic()
    assert count_through(session) == 6
    waited = time.monotonic() - started
    session.save()
    assert stored(client, user) == {"n": 6}
    # It waited for the expiry, not for its whole allowance.
    assert 0.2 < waited < 5


def test_a_session_held_past_the_soft_limit_fails_the_handler_with_a_clear_error(redis_server, caplog):
    client, user = redis_server.client(), new_user("busy")
    client.set(ledger.session_key(user), json.dumps({"n": 5}))
    holder = client.lock(lock_key(user), timeout=30)
    assert holder.acquire(blocking=False)
    reached: list[str] = []
    bot = Bot()

    @bot.text("count")
    def count(msg):
        value = count_through(msg.session)
        reached.append("ran on")  # never: it must not run on stale data
        return f"count={value}"

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="wxrelay.appserver"):
        answer = handle(text_xml("count", user), bot, client, 60, 0.3, 30)
    assert time.monotonic() - started < 5
    assert answer.xml == "" and reached == []
    assert "is held by another message's handler" in caplog.text
    assert "handler count failed" in caplog.text and "SessionBusy" in caplog.text
    # The holder still owns its lock, and the session is untouched.
    assert holder.owned()
    assert stored(client, user) == {"n": 5}
    holder.release()


def test_a_failing_handler_releases_the_lock_and_saves_nothing(redis_server):
    client, user = redis_server.client(), new_user("boom")
    bot = Bot()

    @bot.text("boom")
    def boom(msg):
        msg.session["n"] = 1
        raise RuntimeError("on purpose")

    assert handle(text_xml("boom", user), bot, client, 60, 5, 30).xml == ""
    assert not client.exists(lock_key(user))
    assert stored(client, user) is None


def test_an_update_after_the_lock_expired_is_not_saved(redis_server):
    client, user = redis_server.client(), new_user("lost")
    slow = Session(client, user, 60, lock_ttl=0.2, lock_wait=5)
    slow["n"] = 100
    wait_until(lambda: not client.exists(lock_key(user)), 5, "the slow handler's lock to expire")
    fast = Session(client, user, 60, lock_ttl=10, lock_wait=5)
    assert count_through(fast) == 1
    fast.save()
    with pytest.raises(SessionLockLost):
        slow.save()
    assert stored(client, user) == {"n": 1}


def test_a_session_is_closed_once_its_handler_has_finished(redis_server):
    client, user = redis_server.client(), new_user("closed")
    session = Session(client, user, 60, lock_ttl=10, lock_wait=5)
    session["n"] = 1
    session.save()
    with pytest.raises(SessionClosed):
        session["n"] = 2
    session.release()  # after save(): a no-op
    assert stored(client, user) == {"n": 1}


def test_an_async_handler_does_not_wait_on_the_shared_loop(redis_server, caplog):
    client, user = redis_server.client(), new_user("async")
    holder = client.lock(lock_key(user), timeout=30)
    assert holder.acquire(blocking=False)
    bot = Bot()

    @bot.text("count")
    async def count(msg):
        return f"count={count_through(msg.session)}"

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="wxrelay.appserver"):
        assert handle(text_xml("count", user), bot, client, 60, 10, 30).xml == ""
    # Refused at once rather than stalling the loop every async handler shares.
    assert time.monotonic() - started < 2
    assert "could not wait (async handler)" in caplog.text
    assert holder.owned()
    holder.release()
    # Once free, an async handler takes the session as a sync one does.
    assert "count=1" in handle(text_xml("count", user), bot, client, 60, 10, 30).xml


def test_a_bot_that_never_touches_the_session_makes_no_redis_call(counting_client):
    user = new_user("untouched")
    bot = Bot()

    @bot.text("hi")
    def hi(msg):
        return "hello"

    @bot.text("boom")
    def boom(msg):
        raise RuntimeError("on purpose")

    assert "hello" in handle(text_xml("hi", user), bot, counting_client, 60, 5, 30).xml
    assert handle(text_xml("boom", user), bot, counting_client, 60, 5, 30).xml == ""
    assert handle(text_xml("nothing matches", user), bot, counting_client, 60, 5, 30).xml == ""
    assert CountingConnection.sent == 0


def test_the_call_counter_sees_session_calls(counting_client):
    """The counter above is not blind: a handler that reads the session is seen."""
    bot = Bot()

    @bot.text("peek")
    def peek(msg):
        return f"n={msg.session.get('n', 0)}"

    assert "n=0" in handle(text_xml("peek", new_user("peek")), bot, counting_client, 60, 5, 30).xml
    # Taking the lock, reading the session, releasing the lock.
    assert CountingConnection.sent >= 3


# --- through a relay and a worker -----------------------------------------------

SETTLED = (ledger.TAKEN, ledger.SENT)


def test_twenty_concurrent_counts_from_one_user_through_the_relay(wechat, redis_server, wechat_api):
    user = new_user("e2e")
    msg_ids = [new_msg_id() for _ in range(20)]
    sim = wechat("plain")
    results = run_together(lambda i: sim.say("count", user=user, msg_id=msg_ids[i]), 20)
    client = redis_server.client()

    # Serialised handlers may miss every delivery: those replies go through the API.
    passive = [r.text for r in results if r.text is not None]
    owed = 20 - len(passive)
    assert all(r.answered for r in results)
    assert all(r.body == b"success" for r in results if r.text is None)

    def late() -> list[str]:
        return [m["text"]["content"] for m in wechat_api.messages if m["touser"] == user]

    wait_until(lambda: len(late()) >= owed, 30, f"{owed} late replies")

    def states() -> set:
        return {(client.hget(ledger.record_key(f"msg:{i}"), "state") or b"").decode() for i in msg_ids}

    # Every record settled (or already gone once settled): no reply is still on its way.
    wait_until(lambda: states() <= {*SETTLED, ""}, 30, "every message to settle")
    replies = passive + late()
    assert Counter(replies) == Counter(f"count={i}" for i in range(1, 21))
    assert stored(client, user) == {"count": 20}
    assert not client.exists(lock_key(user))
    assert all(int(client.get(f"test:runs:msg:{i}") or 0) == 1 for i in msg_ids)
