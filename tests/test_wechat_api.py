"""WeChat's API from handlers, on the appliance's one token per account: the typed helpers (sync and
async) against the fake API, wechatpy's client on the same token, and a stampede of handlers on a
token WeChat no longer takes costing one fetch."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from appserver.access_token import TokenError, token_key
from appserver.wechat_api import WeChatAPI, WeChatAPIError
from appserver.wechatpy_client import SharedTokenClient
from common.accounts import OFFICIAL, Account
from simulator import WeChatSimulator
from tests.conftest import WECHAT_TIMEOUT
from tests.services import RedisServer, RelayProcess, Worker

APPID = "wxapibot00000001"
SECRET = "apibot-secret-1"
TOKEN = "apibottoken1"
BURST = 50
_ids = itertools.count(int(time.time() * 1000) % 10**9 * 1000)


def account(redis_server: RedisServer, base_url: str, secret: str | None = SECRET) -> Account:
    return Account(
        "apibot", OFFICIAL, TOKEN, None, None, APPID, None, secret, "", frozenset({"plain"}), True, "api", "",
        redis_server.url, "wxrelay.apibot", base_url,
    )  # fmt: skip


@pytest.fixture
def api(redis_server: RedisServer, wechat_api) -> WeChatAPI:
    """A client in the test's own process, on the appliance's Redis user."""
    wechat_api.add_official(APPID, SECRET)
    redis_server.client().delete(token_key(APPID))
    client = redis.Redis.from_url(redis_server.url)
    return WeChatAPI("apibot", account(redis_server, wechat_api.base_url), lambda: client)


def test_the_helpers_reach_their_endpoints_on_one_token(api, wechat_api):
    fetched = wechat_api.token_requests
    user = f"o_helpers_{next(_ids)}"
    assert api.user_info(user)["nickname"] == f"nick-{user}"
    uploaded = api.upload_media("image", b"\x89PNG picture", "cat.png")
    assert api.download_media(uploaded["media_id"]) == b"\x89PNG picture"
    data = {"first": {"value": "你好"}}
    assert api.send_template(user, "TEMPLATE_ID", data)["msgid"] >= 1
    assert wechat_api.templates[-1] == {"touser": user, "template_id": "TEMPLATE_ID", "data": data}
    menu = {"button": [{"type": "click", "name": "菜单", "key": "K"}]}
    api.create_menu(menu)
    assert api.get_menu() == {"menu": menu} and wechat_api.menu_of(APPID) == menu
    api.delete_menu()
    with pytest.raises(WeChatAPIError) as missing:
        api.get_menu()
    assert (missing.value.errcode, missing.value.endpoint) == (46003, "cgi-bin/menu/get")
    api.send_text(user, "文字")
    api.send_image(user, uploaded["media_id"])
    api.typing(user)
    assert [m["msgtype"] for m in wechat_api.sends_to(user)] == ["text", "image"]
    assert wechat_api.sends_to(user)[0]["text"] == {"content": "文字"}
    assert wechat_api.typing_sent[-1] == (APPID, {"touser": user, "command": "Typing"})
    assert api.call("GET", "cgi-bin/getcallbackip")["ip_list"] == ["127.0.0.1"]
    with pytest.raises(WeChatAPIError) as refused:
        api.download_media("no_such_media")
    assert refused.value.errcode == 40007 and "40007" in str(refused.value)
    assert wechat_api.token_requests == fetched + 1


def test_the_async_client_takes_the_same_token(api, wechat_api):
    user = f"o_async_{next(_ids)}"
    fetched = wechat_api.token_requests
    sync_token = api.token()

    async def calls() -> tuple[dict, bytes]:
        info = await api.aio.user_info(user)
        uploaded = await api.aio.upload_media("voice", b"voice", "v.amr")
        return info, await api.aio.download_media(uploaded["media_id"])

    info, voice = asyncio.run(calls())
    assert info["openid"] == user and voice == b"voice"
    assert wechat_api.token_requests == fetched + 1 and api.token() == sync_token


def test_an_account_without_a_secret_says_so(redis_server, wechat_api):
    api = WeChatAPI("nosecret", account(redis_server, wechat_api.base_url, secret=None), lambda: redis_server.client())
    with pytest.raises(TokenError, match="has no secret"):
        api.user_info("o_someone")
    with pytest.raises(TokenError, match="has no secret"):
        asyncio.run(api.aio.user_info("o_someone"))


@pytest.mark.parametrize("invalidate", ["expire_tokens", "revoke_stable_token"])
def test_wechatpy_on_the_shared_token_refreshes_once_for_a_burst_and_never_mints_its_own(api, wechat_api, invalidate):
    client = SharedTokenClient(api)
    users = [f"o_wechatpy_{next(_ids)}" for _ in range(20)]
    assert client.user.get(users[0])["nickname"] == f"nick-{users[0]}"
    before = api.token()
    fetched, forced = wechat_api.token_requests, wechat_api.forced_refreshes
    wechat_api.expire_tokens() if invalidate == "expire_tokens" else wechat_api.revoke_stable_token(APPID)
    with ThreadPoolExecutor(len(users)) as pool:
        infos = list(pool.map(client.user.get, users))
    assert [info["openid"] for info in infos] == users
    assert api.token() != before
    # Expired: one plain fetch. Revoked: stable_token hands the refused token back once, then one forced fetch.
    expected = {"expire_tokens": (1, 0), "revoke_stable_token": (2, 1)}[invalidate]
    assert (wechat_api.token_requests - fetched, wechat_api.forced_refreshes - forced) == expected
    assert wechat_api.calls("token") == 0  # never cgi-bin/token, which would end everybody's token


# Through the real parts: a relay, a worker pinned to the API bot's account, the fake API.


def say(relay: RelayProcess, text: str, user: str):
    simulator = WeChatSimulator(f"{relay.callback}/apibot", TOKEN, deadline=WECHAT_TIMEOUT)
    return simulator.say(text, user=user, MsgId=str(next(_ids)))


@pytest.fixture
def stack(log_dir: Path, stack_env, redis_server, wechat_api, tmp_path, worker) -> Iterator[RelayProcess]:
    wechat_api.add_official(APPID, SECRET)
    path = tmp_path / "accounts.toml"
    path.write_text(
        f'[accounts.apibot]\ntoken = "{TOKEN}"\nappid = "{APPID}"\nsecret = "{SECRET}"\n'
        'bot = "tests/bots/api_bot.py:bot"\n'
    )
    env = {**stack_env, "WXRELAY_ACCOUNTS_FILE": str(path)}
    # Threads for every sync handler of the burst at once: they wait on the owner's lock together.
    processes = [Worker(log_dir, {**env, "WXRELAY_WORKER_ACCOUNTS": "apibot", "WXRELAY_WORKER_CONCURRENCY": "40"},
                        "apiworker", redis_server)]  # fmt: skip
    processes.append(RelayProcess(log_dir, env))
    yield processes[-1]  # type: ignore[misc]
    wechat_api.release_tokens()
    for process in reversed(processes):
        process.stop()


def answer(result, wechat_api, user: str) -> str | None:
    """The passive reply, or the late one once the customer-service API has it."""
    if result.text:
        return result.text
    wechat_api.wait_for(lambda api: bool(api.sends_to(user)), timeout=15)
    return wechat_api.sends_to(user)[0]["text"]["content"]


def test_handlers_call_the_api_sync_and_async_and_through_bot_api(stack, wechat_api):
    user = f"o_tour_{next(_ids)}"
    assert say(stack, "whoami", user).text == f"you are nick-{user}"
    assert say(stack, "whoami async", user).text == f"you are nick-{user}"
    assert say(stack, "whoami bot", user).text == f"you are nick-{user}"
    tour = say(stack, "tour", user)
    msgid = len(wechat_api.templates)
    assert tour.text == f"tour: b'\\x89PNG fake picture' {msgid} 今日歌曲 46003 ['127.0.0.1']"
    assert wechat_api.templates[-1]["data"] == {"name": {"value": "张三"}}
    assert [m["msgtype"] for m in wechat_api.sends_to(user)] == ["text", "image", "news"]
    assert say(stack, "tour async", user).text == "tour async: b'fake voice' 40007 cgi-bin/media/get"
    assert wechat_api.sends_to(user)[-1]["text"] == {"content": "异步"}


@pytest.mark.parametrize("invalidate", ["expire_tokens", "revoke_stable_token"])
def test_fifty_handlers_on_a_token_wechat_stopped_taking_cost_one_fetch(stack, wechat_api, invalidate):
    """Half sync, half async, all calling WeChat at once with the token it has just stopped taking:
    each is refused, discards it, and takes the one new token."""
    users = [f"o_burst_{next(_ids)}" for _ in range(BURST)]
    assert say(stack, "whoami", users[0]).text  # the token is cached
    fetched, forced, calls = wechat_api.token_requests, wechat_api.forced_refreshes, wechat_api.calls("user/info")
    wechat_api.expire_tokens() if invalidate == "expire_tokens" else wechat_api.revoke_stable_token(APPID)
    wechat_api.hold_calls()
    texts = ["whoami" if n % 2 else "whoami async" for n in range(BURST)]
    with ThreadPoolExecutor(BURST) as pool:
        results = [pool.submit(say, stack, text, user) for text, user in zip(texts, users, strict=True)]
        wechat_api.wait_for(lambda api: api.calls_waiting == BURST, timeout=10)
        wechat_api.release_calls()
        answers = [answer(result.result(), wechat_api, user) for result, user in zip(results, users, strict=True)]
    assert answers == [f"you are nick-{user}" for user in users]
    # Expired: one plain fetch. Revoked: stable_token hands the refused token back once, then one forced fetch.
    expected = {"expire_tokens": (1, 0), "revoke_stable_token": (2, 1)}[invalidate]
    assert (wechat_api.token_requests - fetched, wechat_api.forced_refreshes - forced) == expected
    assert wechat_api.calls("user/info") - calls == 2 * BURST  # each refused once, then answered
    print(f"\n{BURST} handlers, {invalidate}: {wechat_api.token_requests - fetched} token request(s)")
