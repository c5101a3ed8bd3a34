"""Several accounts through one appliance: each on its own URL with its own
keys and bot, keyed apart in Redis, isolated from each other's load, on
several Redis servers, added without a restart."""

from __future__ import annotations

import itertools
import os
import signal
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from simulator import WeChatSimulator
from tests.conftest import TOKEN, WECHAT_TIMEOUT
from tests.services import RedisServer, RelayProcess, Worker, wait_until

SHOP = {"token": "shoptoken1", "aes_key": "S" * 43, "appid": "wxshop0000000001"}
BLOG = {"token": "blogtoken1", "aes_key": "B" * 43, "appid": "wxblog0000000001"}
# Where tests/bots/account_bots.py looks to let its sleepy handlers go.
RELEASE_KEY = "test:accounts:release"
_ids = itertools.count(int(time.time() * 1000) % 10**9 * 1000)


def msg_id() -> str:
    return str(next(_ids))


def account(name: str, bot: str, keys: dict[str, str] | None = None) -> str:
    lines = [f"[accounts.{name}]", f'bot = "tests/bots/account_bots.py:{bot}"']
    lines += [f'{field} = "{value}"' for field, value in (keys or {"token": f"{name}token1"}).items()]
    return "\n".join(lines) + "\n"


def simulator(relay: RelayProcess, name: str, keys: dict[str, str], mode: str = "plain") -> WeChatSimulator:
    url = f"{relay.callback}/{name}" if name else relay.callback
    return WeChatSimulator(
        url, keys["token"], keys.get("appid", ""), keys.get("aes_key"), mode=mode, deadline=WECHAT_TIMEOUT
    )


class Stack:
    """Relays and workers of the test's own, serving an accounts file (and `default`)."""

    def __init__(self, log_dir: Path, stack_env: dict[str, str], redis_server: RedisServer, path: Path) -> None:
        self.log_dir, self.redis_server, self.path = log_dir, redis_server, path
        self.env = {**stack_env, "WXRELAY_ACCOUNTS_FILE": str(path)}
        self.processes: list[RelayProcess | Worker] = []

    def worker(self, redis_server: RedisServer | None = None, **env: str) -> Worker:
        name = f"accounts{len(self.processes)}"
        self.processes.append(Worker(self.log_dir, {**self.env, **env}, name, redis_server or self.redis_server))
        return self.processes[-1]  # type: ignore[return-value]

    def relay(self) -> RelayProcess:
        self.processes.append(RelayProcess(self.log_dir, self.env))
        return self.processes[-1]  # type: ignore[return-value]

    def start(self, text: str) -> RelayProcess:
        self.path.write_text(text)
        self.worker()
        return self.relay()

    def stop(self) -> None:
        self.redis_server.client().set(RELEASE_KEY, 1)
        for process in reversed(self.processes):
            process.stop()
        self.redis_server.client().delete(RELEASE_KEY)


@pytest.fixture
def stack(log_dir, stack_env, redis_server, tmp_path, worker):
    started = Stack(log_dir, stack_env, redis_server, tmp_path / "accounts.toml")
    yield started
    started.stop()


def test_each_account_is_answered_by_its_own_bot_with_its_own_keys(stack, redis_server):
    relay = stack.start(account("shop", "shop", SHOP) + account("blog", "blog", BLOG))
    shop_id, blog_id = msg_id(), msg_id()
    shop = simulator(relay, "shop", SHOP, mode="safe").say("hello", MsgId=shop_id)
    blog = simulator(relay, "blog", BLOG).say("hello", MsgId=blog_id)
    assert (shop.delivery, shop.decrypted, shop.text) == (1, True, "shop bot: hello")
    assert (blog.delivery, blog.text) == (1, "blog bot: hello")
    # The single-account settings are still the account on /wechat, with its bot.
    default = simulator(relay, "", {"token": TOKEN}).say("plain hello")
    assert default.delivery == 1 and default.text and "bot:" not in default.text

    # Signed with shop's token, on blog's URL: refused, and nothing runs.
    forged = WeChatSimulator(f"{relay.callback}/blog", SHOP["token"], deadline=WECHAT_TIMEOUT, deliveries=1)
    assert forged.say("not yours", MsgId=msg_id()).attempts[0].outcome == 403
    # An unknown account costs a 404, before any check.
    assert httpx.post(f"{relay.callback}/nobody", content=b"<xml/>").status_code == 404
    assert httpx.get(f"{relay.callback}/shop/deeper").status_code == 404

    client = redis_server.client()
    assert client.exists(f"wxrelay:msg:shop/msg:{shop_id}") and client.exists(f"wxrelay:msg:blog/msg:{blog_id}")
    assert not client.exists(f"wxrelay:msg:msg:{shop_id}")
    assert relay.metric("wxrelay_messages_total", account="shop", outcome="passive") == 1
    assert relay.metric("wxrelay_messages_total", account="blog", outcome="passive") == 1
    assert relay.metric("wxrelay_rejected_total", account="blog", reason="signature") == 1


def test_late_replies_go_out_with_each_accounts_own_token_or_not_at_all(stack, wechat_api, redis_server):
    wechat_api.add_official(SHOP["appid"], "shop-secret-1")
    wechat_api.add_official(BLOG["appid"], "blog-secret-1")
    quiet = {"token": "quiettoken1", "appid": "wxquiet000000001", "secret": "quiet-secret-1"}
    wechat_api.add_official(quiet["appid"], quiet["secret"])
    stack.env["BLOG_SECRET"] = "blog-secret-1"  # the file names it: ${BLOG_SECRET}
    relay = stack.start(
        account("shop", "shop", {**SHOP, "secret": "shop-secret-1"})
        + account("blog", "blog", {**BLOG, "secret": "${BLOG_SECRET}"})
        + account("quiet", "blog", quiet)
        + "late_replies = false\n"
    )
    seconds = 3 * WECHAT_TIMEOUT + 0.3  # past every delivery
    users = {name: f"o_late_{name}_{msg_id()}" for name in ("shop", "blog", "quiet")}
    keys = {"shop": SHOP, "blog": BLOG, "quiet": quiet}
    ids = {name: msg_id() for name in users}

    def say(name: str):
        return simulator(relay, name, keys[name]).say(f"slow {seconds}", user=users[name], MsgId=ids[name])

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(say, users))
    assert all(result.answered and result.reply is None for result in results)  # `success`, then late
    wechat_api.wait_for(lambda api: api.sends_to(users["shop"]) and api.sends_to(users["blog"]), timeout=15)
    shop_sends = [m for m in wechat_api.sends_by(SHOP["appid"]) if m["touser"] == users["shop"]]
    assert [m["text"]["content"] for m in shop_sends] == [f"shop bot: slow {seconds}"]
    assert [m["touser"] for m in wechat_api.sends_by(BLOG["appid"])] == [users["blog"]]
    # The account without late replies: its reply ended with WeChat's window; nothing is owed to the API.
    quiet_record = f"wxrelay:msg:quiet/msg:{ids['quiet']}"
    wait_until(lambda: redis_server.client().hget(quiet_record, "state") == b"silent", 5, "the quiet reply settled")
    assert wechat_api.sends_to(users["quiet"]) == [] and wechat_api.sends_by(quiet["appid"]) == []


def test_an_account_saturating_its_bot_leaves_the_others_answered_passively(stack, redis_server, stack_env):
    """A's bot blocks every handler slot it can get, for up to 30 s; B still answers in time."""
    relay = stack.start(account("slow", "sleepy") + account("quick", "shop"))
    client = redis_server.client()
    client.delete("test:accounts:sleepy_started")
    slots = int(stack_env["WXRELAY_WORKER_CONCURRENCY"])
    slow = WeChatSimulator(f"{relay.callback}/slow", "slowtoken1", deadline=WECHAT_TIMEOUT)
    burst = ThreadPoolExecutor(max_workers=3 * slots)
    for n in range(3 * slots):
        burst.submit(slow.say, f"burst {n}")
    # A takes what it may: every slot but the shares kept for the worker's other accounts (quick, default).
    queues = 3
    cap = slots - (queues - 1) * (slots // (2 * queues))
    wait_until(lambda: int(client.get("test:accounts:sleepy_started") or 0) >= cap, 10, "A's handlers to fill")

    quick = WeChatSimulator(f"{relay.callback}/quick", "quicktoken1", deadline=WECHAT_TIMEOUT)
    seconds = []
    for n in range(50):
        started = time.monotonic()
        result = quick.say(f"quick {n}")
        seconds.append(time.monotonic() - started)
        assert (result.delivery, result.text) == (1, f"shop bot: quick {n}")
    assert int(client.get("test:accounts:sleepy_started")) == cap, "A took a slot kept for B"
    p50, p99 = statistics.median(seconds), statistics.quantiles(seconds, n=100)[98]
    print(f"\nB while A holds {cap} of {slots} slots: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert max(seconds) < 1.0
    client.set(RELEASE_KEY, 1)
    burst.shutdown(wait=True)


def test_accounts_on_two_redis_servers_through_one_relay(stack, log_dir, redis_server):
    second = RedisServer(log_dir, password="secondpass")
    try:
        far = {"token": "fartoken1", "redis_url": second.url}
        stack.path.write_text(account("near", "shop") + account("far", "blog", far))
        stack.worker()
        far_worker = stack.worker(second, WXRELAY_WORKER_ACCOUNTS="far")
        relay = stack.relay()
        near_id, far_id = msg_id(), msg_id()
        near = WeChatSimulator(f"{relay.callback}/near", "neartoken1", deadline=WECHAT_TIMEOUT).say("hi", MsgId=near_id)
        far_result = WeChatSimulator(f"{relay.callback}/far", "fartoken1", deadline=WECHAT_TIMEOUT).say(
            "hi", MsgId=far_id
        )
        assert (near.delivery, near.text) == (1, "shop bot: hi")
        assert (far_result.delivery, far_result.text) == (1, "blog bot: hi")
        assert second.client().exists(f"wxrelay:msg:far/msg:{far_id}")
        assert not redis_server.client().exists(f"wxrelay:msg:far/msg:{far_id}")
        assert redis_server.client().exists(f"wxrelay:msg:near/msg:{near_id}")
        health = httpx.get(f"{relay.url}/healthz").json()
        assert health["status"] == "ok" and len(health["redises"]) == 2
        far_worker.stop()
        second.client().delete("wxrelay:workers")
        # No worker left for the far Redis: /healthz names it.
        health = httpx.get(f"{relay.url}/healthz").json()
        assert any(problem.startswith(f"127.0.0.1:{second.port}: no worker") for problem in health["problems"])
    finally:
        second.stop()


def test_health_asks_only_the_redis_servers_accounts_use(log_dir, stack_env, tmp_path):
    """WXRELAY_REDIS_URL's server, with no worker and no account on it, is no problem."""
    unused, own = RedisServer(log_dir, password="unusedpass"), RedisServer(log_dir, password="ownpass")
    stack = Stack(log_dir, {**stack_env, "WXRELAY_REDIS_URL": unused.url}, own, tmp_path / "accounts.toml")
    try:
        stack.env.pop("WECHAT_TOKEN")
        stack.path.write_text(account("own", "blog", {"token": "owntoken1", "redis_url": own.url}))
        stack.worker(WXRELAY_WORKER_ACCOUNTS="own")
        relay = stack.relay()
        health = httpx.get(f"{relay.url}/healthz").json()
        assert (health["status"], health["workers"]) == ("ok", 1), health
    finally:
        stack.stop()
        own.stop()
        unused.stop()


def test_an_account_added_by_a_reload_while_a_delivery_is_held(stack, redis_server):
    # WeChat's own 5 s per delivery, so the held delivery outlasts the reload however slow the machine is;
    # the handler returns only once the reload is done.
    stack.env["WXRELAY_WECHAT_TIMEOUT"] = "5"
    relay = stack.start(account("shop", "shop"))
    shop = WeChatSimulator(f"{relay.callback}/shop", "shoptoken1", deadline=5)
    with ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(shop.say, "hold")
        wait_until(lambda: relay.metric("wxrelay_deliveries_held") >= 1, 5, "the delivery to be held")
        stack.path.write_text(account("shop", "shop") + account("blog", "blog"))
        os.kill(relay.pid, signal.SIGHUP)
        wait_until(lambda: "accounts reloaded: serving default, shop, blog" in relay.log(), 5, "the reload")
        redis_server.client().set(RELEASE_KEY, 1)
        result = held.result(timeout=10)
    assert (result.delivery, result.text) == (1, "shop bot: held")

    # Workers take the new account's queue when they restart (make reload restarts them one by one).
    stack.processes[0].stop()
    stack.worker()
    blog = WeChatSimulator(f"{relay.callback}/blog", "blogtoken1", deadline=WECHAT_TIMEOUT).say("new here")
    assert (blog.delivery, blog.text) == (1, "blog bot: new here")

    # A broken file is refused whole: the accounts stay as they were.
    stack.path.write_text(account("shop", "shop") + '[accounts.Bad]\ntoken = "x"\n')
    os.kill(relay.pid, signal.SIGHUP)
    wait_until(lambda: "accounts not reloaded, still serving default, shop, blog" in relay.log(), 5, "the refusal")
    again = WeChatSimulator(f"{relay.callback}/blog", "blogtoken1", deadline=WECHAT_TIMEOUT).say("still here")
    assert again.text == "blog bot: still here"
