"""WeChat's "typing…" for a reply that missed the first delivery: once, on accounts that ask for it,
at most one per user while it shows, and never in the reply's way."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from appserver.access_token import token_key
from simulator import WeChatSimulator
from tests.conftest import WECHAT_TIMEOUT
from tests.services import RelayProcess, Worker, wait_until

TYPER = {"token": "typertoken1", "appid": "wxtyper000000001", "secret": "typer-secret-1"}
MUTE = {"token": "mutetoken1", "appid": "wxmute0000000001", "secret": "mute-secret-1"}
WRONG = {"token": "wrongtoken1", "appid": "wxwrong000000001", "secret": "wrong-secret-1"}
# Past the first delivery, well within the second.
SLOW = WECHAT_TIMEOUT + 0.5
_ids = itertools.count(int(time.time() * 1000) % 10**9 * 1000)


def user(name: str) -> str:
    return f"o_typing_{name}_{next(_ids)}"


class Stack:
    def __init__(self, relay: RelayProcess, worker: Worker) -> None:
        self.relay, self.worker = relay, worker

    def say(self, account: str, text: str, openid: str):
        keys = {"typer": TYPER, "mute": MUTE, "wrong": WRONG}[account]
        simulator = WeChatSimulator(f"{self.relay.callback}/{account}", keys["token"], deadline=WECHAT_TIMEOUT)
        return simulator.say(text, user=openid, MsgId=str(next(_ids)))


@pytest.fixture
def stack(log_dir: Path, stack_env, redis_server, wechat_api, tmp_path, worker) -> Iterator[Stack]:
    for keys in (TYPER, MUTE):
        wechat_api.add_official(keys["appid"], keys["secret"])
    wechat_api.add_official(WRONG["appid"], "not-what-the-file-says")
    path = tmp_path / "accounts.toml"
    path.write_text(
        "".join(
            f'[accounts.{name}]\ntoken = "{keys["token"]}"\nappid = "{keys["appid"]}"\nsecret = "{keys["secret"]}"\n'
            f'bot = "tests/bots/api_bot.py:typer"\ntyping = {"false" if name == "mute" else "true"}\n'
            for name, keys in (("typer", TYPER), ("mute", MUTE), ("wrong", WRONG))
        )
    )
    env = {**stack_env, "WXRELAY_ACCOUNTS_FILE": str(path)}
    started = Worker(log_dir, {**env, "WXRELAY_WORKER_ACCOUNTS": "typer,mute,wrong"}, "typingworker", redis_server)
    relay = RelayProcess(log_dir, env)
    yield Stack(relay, started)
    wechat_api.release_tokens()
    relay.stop()
    started.stop()


def typing_to(wechat_api, openid: str) -> list[str]:
    """The owners of the tokens that showed `openid` the indicator."""
    return [owner for owner, body in wechat_api.typing_sent if body == {"touser": openid, "command": "Typing"}]


def test_a_reply_past_the_first_delivery_shows_typing_once_and_no_other_does(stack, wechat_api):
    quick, mute, slow, slow_async = user("quick"), user("mute"), user("slow"), user("async")
    assert stack.say("typer", "hi", quick).text == "quick reply to hi"
    result = stack.say("mute", f"slow {SLOW}", mute)
    assert (result.delivery, result.text) == (2, f"slow reply to slow {SLOW}")
    for openid, text in ((slow, f"slow {SLOW}"), (slow_async, f"slow async {SLOW}")):
        result = stack.say("typer", text, openid)
        assert (result.delivery, result.text) == (2, f"slow reply to {text}")
    wechat_api.wait_for(lambda api: typing_to(api, slow) and typing_to(api, slow_async), timeout=5)
    # By now the quick message's watch had long been due: it was stopped with its answer.
    assert typing_to(wechat_api, slow) == typing_to(wechat_api, slow_async) == [TYPER["appid"]]
    assert typing_to(wechat_api, quick) == typing_to(wechat_api, mute) == []


def test_one_typing_per_user_while_it_shows(stack, wechat_api):
    openid = user("twice")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda n: stack.say("typer", f"slow {SLOW + n / 10}", openid), (0, 1)))
    assert all(result.text for result in results)
    wechat_api.wait_for(lambda api: typing_to(api, openid), timeout=5)
    assert typing_to(wechat_api, openid) == [TYPER["appid"]]


def test_typing_stuck_on_its_token_never_delays_the_reply(stack, wechat_api, redis_server):
    openid = user("stuck")
    redis_server.client().delete(token_key(TYPER["appid"]))
    wechat_api.hold_tokens()
    result = stack.say("typer", f"slow {SLOW}", openid)
    assert (result.delivery, result.text) == (2, f"slow reply to slow {SLOW}")
    # The typing send began within the first delivery's end and the reply's, and is still stuck.
    wechat_api.wait_for(lambda api: api.token_requests_waiting == 1, timeout=5)
    assert typing_to(wechat_api, openid) == []
    wechat_api.release_tokens()
    wechat_api.wait_for(lambda api: typing_to(api, openid), timeout=5)


def test_a_typing_wechat_refuses_is_a_warning_without_secrets(stack, wechat_api):
    result = stack.say("wrong", f"slow {SLOW}", user("wrong"))
    assert (result.delivery, result.text) == (2, f"slow reply to slow {SLOW}")
    wait_until(lambda: "typing indicator of wrong not shown" in stack.worker.log(), 5, "the warning")
    line = next(line for line in stack.worker.log().splitlines() if "typing indicator of wrong" in line)
    assert "WARNING" in line and "TokenError" in line
    assert WRONG["secret"] not in stack.worker.log()
