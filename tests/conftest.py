"""The appliance's real parts, started for the tests on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from simulator import WeChatSimulator
from simulator.api import FakeWeChatAPI
from tests.services import RedisServer, RelayProcess, Worker

TOKEN = "wxrelaytest"
APPID = "wx2c2769f8efd9abc2"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
SECRET = "test-secret"
# The suite shortens WeChat's 5 s deadline through configuration.
WECHAT_TIMEOUT = 1.0
REPLY_BUDGET = 0.8


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_server(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def wechat_api() -> Iterator[FakeWeChatAPI]:
    with FakeWeChatAPI(appid=APPID, secret=SECRET) as api:
        yield api


@pytest.fixture(scope="session")
def stack_env(redis_server: RedisServer, wechat_api: FakeWeChatAPI, log_dir: Path) -> dict[str, str]:
    empty = log_dir / "empty.env"
    empty.write_text("")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WECHAT_", "WXRELAY_"))},
        "WXRELAY_ENV_FILE": str(empty),
        "WECHAT_TOKEN": TOKEN,
        "WECHAT_APPID": APPID,
        "WECHAT_AES_KEY": AES_KEY,
        "WECHAT_APPSECRET": SECRET,
        "WECHAT_API_BASE": wechat_api.base_url,
        "WECOM_API_BASE": wechat_api.base_url,
        "WXRELAY_REDIS_URL": redis_server.url,
        "WXRELAY_BOT": "tests/bots/counting_bot.py:bot",
        "WXRELAY_WECHAT_TIMEOUT": str(WECHAT_TIMEOUT),
        "WXRELAY_REPLY_BUDGET": str(REPLY_BUDGET),
        "WXRELAY_WORKER_CONCURRENCY": "16",
        "WXRELAY_LOG_LEVEL": "INFO",
        "WXRELAY_SPOOL_DIR": str(log_dir / "spool"),
    }


@pytest.fixture(scope="session")
def worker(log_dir: Path, stack_env: dict[str, str], redis_server: RedisServer) -> Iterator[Worker]:
    process = Worker(log_dir, stack_env, "worker1", redis_server)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def relays(log_dir: Path, stack_env: dict[str, str], worker: Worker) -> Iterator[list[RelayProcess]]:
    processes = [RelayProcess(log_dir, stack_env), RelayProcess(log_dir, stack_env)]
    yield processes
    for process in processes:
        process.stop()


@pytest.fixture
def start_relay(log_dir: Path, stack_env: dict[str, str], worker: Worker) -> Iterator[Callable[..., RelayProcess]]:
    """A relay of the test's own, with some settings changed."""
    started: list[RelayProcess] = []

    def start(**overrides: str) -> RelayProcess:
        process = RelayProcess(log_dir, {**stack_env, **overrides})
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def wechat(relays: list[RelayProcess]) -> Callable[..., WeChatSimulator]:
    """A simulated WeChat pointed at a relay, with the suite's short deadline."""

    def make(mode: str = "plain", relay: int = 0, **kwargs: object) -> WeChatSimulator:
        options = {"deadline": WECHAT_TIMEOUT, "deliveries": 3, **kwargs}
        return WeChatSimulator(relays[relay].callback, TOKEN, APPID, AES_KEY, mode=mode, **options)  # type: ignore[arg-type]

    return make


def runs(redis_server: RedisServer, dedupe_key: str) -> int:
    """How many times the test bot ran for one message."""
    return int(redis_server.client().get(f"test:runs:{dedupe_key}") or 0)
