"""The AI example bot (appserver/examples/ai_chat.py) through the whole chain: the simulator as WeChat, a real
relay, Redis and Celery worker running the bot, the fake WeChat API for late replies, and a fake chat-completions
API (tests/fake_completions.py) as the model, the only fakes."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from appliance import config, envfile
from appserver.examples.ai_chat import APOLOGY, BUDGET, BUSY, SYSTEM_PROMPT
from common.settings import Settings
from simulator import WeChatSimulator
from simulator.api import FakeWeChatAPI
from tests.conftest import AES_KEY, APPID, TOKEN, WECHAT_TIMEOUT
from tests.fake_completions import FakeCompletions, answer_to
from tests.services import RedisServer, RelayProcess, Worker, wait_until
from tests.test_deploy import TESTS_DEPLOY, render

API_KEY = "sk-fake-model-key-0123456789"
MODEL = "fake-model"
# For the settings tests only: nothing calls it.
ENDPOINT = "https://models.example/v1"
# The suite's worker cancels a handler after this long: the model gets all of it but a second.
SOFT_LIMIT = 6
_users = itertools.count(int(time.time()) % 10**6 * 1000)


def new_user(name: str) -> str:
    return f"o_ai_{name}_{next(_users)}"


class Stack:
    """A relay and a worker of their own, running the AI example on its own queue."""

    def __init__(self, log_dir, env: dict[str, str], name: str, redis_server: RedisServer) -> None:
        self.worker = Worker(log_dir, env, name, redis_server)
        try:
            self.relay = RelayProcess(log_dir, env)
        except BaseException:
            self.worker.stop()
            raise
        deadline = float(env["WXRELAY_WECHAT_TIMEOUT"])
        self.wechat = WeChatSimulator(self.relay.callback, TOKEN, APPID, AES_KEY, deadline=deadline, deliveries=3)

    def stop(self) -> None:
        self.relay.stop()
        self.worker.stop()


@pytest.fixture(scope="module")
def completions() -> Iterator[FakeCompletions]:
    with FakeCompletions() as fake:
        yield fake


def ai_env(stack_env: dict[str, str], completions: FakeCompletions, queue: str, **overrides: str) -> dict[str, str]:
    return {
        **stack_env,
        "WXRELAY_QUEUE": queue,
        "WXRELAY_BOT": "appserver.examples.ai_chat:bot",
        "WXRELAY_AI_BASE_URL": completions.base_url,
        "WXRELAY_AI_API_KEY": API_KEY,
        "WXRELAY_AI_MODEL": MODEL,
        **overrides,
    }


@pytest.fixture(scope="module")
def stack(log_dir, stack_env, completions, redis_server) -> Iterator[Stack]:
    """At the suite's short WeChat deadline."""
    env = ai_env(
        stack_env, completions, "ai-chat",
        WXRELAY_TASK_SOFT_TIME_LIMIT=str(SOFT_LIMIT), WXRELAY_TASK_TIME_LIMIT=str(SOFT_LIMIT + 2),
    )  # fmt: skip
    started = Stack(log_dir, env, "ai-chat", redis_server)
    yield started
    started.stop()


def say(stack: Stack, user: str, text: str) -> str | None:
    """The passive reply."""
    return stack.wechat.say(text, user=user).text


def seen_by(user: str, passive: str | None, wechat_api: FakeWeChatAPI) -> list[str]:
    """Everything the user saw of one message: its passive reply, then each customer-service send."""
    return ([passive] if passive else []) + [m["text"]["content"] for m in wechat_api.sends_to(user)]


def test_the_conversation_goes_to_the_model_with_each_earlier_exchange(stack, completions):
    user = new_user("kept")
    assert say(stack, user, "My name is Ada.") == answer_to("My name is Ada.")
    assert say(stack, user, "What is my name?") == answer_to("What is my name?")
    (request,) = completions.requests_about("What is my name?")
    assert request.messages == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": answer_to("My name is Ada.")},
        {"role": "user", "content": "What is my name?"},
    ]
    assert request.model == MODEL and request.authorization == f"Bearer {API_KEY}"


def test_the_history_is_trimmed_to_its_character_budget_whole_exchanges_first_out(stack, completions):
    user = new_user("long")
    # Two of them fit the budget beside the system prompt and two answers, three do not.
    long = [f"{name} " + name[0] * int(BUDGET.characters * 0.4) for name in ("alpha", "beta", "gamma")]
    for question in long:
        assert say(stack, user, question) == answer_to(question)
    (second,) = completions.requests_about(long[1])
    assert second.contents("user") == long[:2]
    (third,) = completions.requests_about(long[2])
    assert third.messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert third.contents("user") == long[1:] and third.contents("assistant") == [answer_to(long[1])]
    assert sum(len(message["content"]) for message in third.messages) <= BUDGET.characters


def test_the_history_keeps_at_most_its_number_of_exchanges(stack, completions):
    user = new_user("turns")
    questions = [f"{user} turn {n}" for n in range(BUDGET.exchanges + 2)]
    for question in questions:
        assert say(stack, user, question) == answer_to(question)
    (last,) = completions.requests_about(questions[-1])
    assert last.contents("user") == questions[-BUDGET.exchanges - 1 :]
    assert last.messages[0]["role"] == "system" and len(last.messages) == 2 * BUDGET.exchanges + 2


def test_a_model_error_answers_the_apology_and_is_not_kept(stack, completions, redis_server):
    user = new_user("error")
    completions.fail_when(f"{user} boom", 500)
    assert say(stack, user, f"{user} boom") == APOLOGY
    assert say(stack, user, f"{user} again") == answer_to(f"{user} again")
    (after,) = completions.requests_about(f"{user} again")
    assert after.contents("user") == [f"{user} again"]
    log = stack.worker.log()
    assert f"ai_chat: no answer for {user}: HTTP 500" in log
    assert API_KEY not in log


def test_a_model_slower_than_the_soft_limit_answers_the_apology(stack, completions, wechat_api):
    user = new_user("timeout")
    completions.delay_when(f"{user} ponder forever", SOFT_LIMIT + 5)
    passive = say(stack, user, f"{user} ponder forever")
    # Cut a second before the worker's soft limit: after every delivery of the suite's short deadline.
    wait_until(lambda: seen_by(user, passive, wechat_api), SOFT_LIMIT + 10, "the apology")
    assert seen_by(user, passive, wechat_api) == [APOLOGY]
    assert f"ai_chat: no answer for {user}: no answer within {SOFT_LIMIT - 1} s" in stack.worker.log()


def test_a_message_while_the_model_still_thinks_is_told_so_and_not_kept(stack, completions, wechat_api):
    user = new_user("busy")
    first, second, third = f"{user} ponder", f"{user} hurry up", f"{user} and now"
    # Past every delivery of the suite's short deadline, within the soft limit: its answer goes late.
    completions.delay_when(first, 3 * WECHAT_TIMEOUT + 0.5)
    with ThreadPoolExecutor(1) as pool:
        pondering = pool.submit(say, stack, user, first)
        wait_until(lambda: completions.requests_about(first), 10, "the first question at the model")
        assert say(stack, user, second) == BUSY
        passive = pondering.result()
    wait_until(lambda: seen_by(user, passive, wechat_api), 10, "the answer to the first question")
    assert seen_by(user, passive, wechat_api) == [answer_to(first)]
    assert say(stack, user, third) == answer_to(third)
    (request,) = completions.requests_about(third)
    assert request.contents("user") == [first, third]
    assert not completions.requests_about(second)


def test_at_wechats_real_timing_a_12_s_model_answers_passively_and_a_25_s_one_late(
    log_dir, stack_env, completions, redis_server, wechat_api
):
    env = ai_env(
        stack_env, completions, "ai-chat-real",
        WXRELAY_WECHAT_TIMEOUT="5.0", WXRELAY_REPLY_BUDGET="4.5",
        WXRELAY_TASK_SOFT_TIME_LIMIT="40", WXRELAY_TASK_TIME_LIMIT="60",
    )  # fmt: skip
    real = Stack(log_dir, env, "ai-chat-real", redis_server)
    try:
        quick, slow = new_user("12s"), new_user("25s")
        completions.delay_when(f"{quick} twelve", 12)
        completions.delay_when(f"{slow} twenty-five", 25)
        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            in_time = pool.submit(real.wechat.say, f"{quick} twelve", user=quick)
            late = pool.submit(real.wechat.say, f"{slow} twenty-five", user=slow)
            passive = in_time.result()
            missed = late.result()
            wait_until(lambda: wechat_api.sends_to(slow), 40, "the late reply")
            late_seconds = time.monotonic() - started
    finally:
        real.stop()
    print(f"\n12 s model: passive reply on delivery {passive.delivery}, {passive.elapsed:.1f} s end to end")
    print(f"25 s model: `success` on delivery {missed.delivery}, late reply after {late_seconds:.1f} s end to end")
    assert passive.delivery == 3 and passive.text == answer_to(f"{quick} twelve")
    assert not wechat_api.sends_to(quick)
    assert missed.answered and missed.delivery == 3 and missed.body == b"success"
    assert [m["text"]["content"] for m in wechat_api.sends_to(slow)] == [answer_to(f"{slow} twenty-five")]


# --- its settings reach the workers --------------------------------------------------------


def test_its_variables_in_the_owners_env_file_reach_the_local_workers(tmp_path):
    owner = tmp_path / ".env"
    envfile.ensure(owner)
    with owner.open("a") as file:
        file.write(f"WXRELAY_AI_BASE_URL={ENDPOINT}\nWXRELAY_AI_API_KEY={API_KEY}\n")
    local = config.load({"WXRELAY_ENV_FILE": str(owner), "WXRELAY_STATE_DIR": str(tmp_path / "state")})
    # What `make run` writes for its relays and workers, read back as a worker reads it.
    resolved = tmp_path / "wxrelay.env"
    envfile.write_private(resolved, envfile.render(local.environ(), ""))
    settings = Settings.from_env({}, resolved)
    assert settings.ai_base_url == ENDPOINT and settings.ai_api_key == API_KEY and settings.ai_model == "gpt-4o-mini"


def test_its_variables_reach_the_env_file_a_deploy_writes(tmp_path):
    extra = ["-e", f"wxrelay_ai_base_url={ENDPOINT}", "-e", f"wxrelay_ai_api_key={API_KEY}"]
    host = render(TESTS_DEPLOY / "inventory", tmp_path, *extra) / "rehearsal"
    settings = Settings.from_env({}, host / "wxrelay.env")
    assert settings.ai_base_url == ENDPOINT and settings.ai_api_key == API_KEY and settings.ai_model == "gpt-4o-mini"
