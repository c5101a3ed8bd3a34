"""deploy/redis/redis.conf.j2 as a server runs it: nobody gets in unnamed,
the appliance's user may not reconfigure, wipe or inspect the server, the
passwords are kept as hashes only — and what that user writes, transactions
included, survives Redis being killed."""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.services import ROOT, Process, free_port, require

PASSWORD = "app-password-0123456789"
ADMIN_PASSWORD = "admin-password-0123456789"


def render(port: int, data: Path) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROOT / "deploy"), undefined=jinja2.StrictUndefined, trim_blocks=True
    )
    return environment.get_template("redis/redis.conf.j2").render(
        wxrelay_redis_bind="127.0.0.1",
        wxrelay_redis_port=port,
        wxrelay_redis_user="wxrelay",
        wxrelay_redis_password_sha256=hashlib.sha256(PASSWORD.encode()).hexdigest(),
        wxrelay_redis_admin_password_sha256=hashlib.sha256(ADMIN_PASSWORD.encode()).hexdigest(),
        wxrelay_redis_channel_rules="&*",
        wxrelay_redis_dir=str(data),
        wxrelay_redis_logfile="",
        wxrelay_redis_maxmemory="64mb",
    )


class ConfiguredRedis:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.tmp_path = tmp_path
        (tmp_path / "data").mkdir()
        self.conf = tmp_path / "redis.conf"
        self.conf.write_text(render(self.port, tmp_path / "data"))
        self.process: Process | None = None

    def start(self) -> None:
        self.process = Process(f"redis-conf-{self.port}", [require("redis-server"), str(self.conf)], self.tmp_path)
        self.process.wait_ready(lambda: self.app().ping())

    def app(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(port=self.port, username="wxrelay", password=PASSWORD, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ConfiguredRedis]:
    configured = ConfiguredRedis(tmp_path)
    configured.start()
    yield configured
    if configured.process is not None:
        configured.process.stop()


def test_nobody_unnamed_and_the_appliances_user_cannot_touch_the_server(server: ConfiguredRedis) -> None:
    for password in (None, PASSWORD, ADMIN_PASSWORD):
        with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
            redis.Redis(port=server.port, password=password, retry=Retry(NoBackoff(), 0)).ping()
    app = server.app()
    assert app.set("k", "v") and app.get("k") == b"v" and app.info("memory")["used_memory"] > 0
    for command in (("CONFIG", "GET", "maxmemory"), ("FLUSHALL",), ("KEYS", "*"), ("SHUTDOWN",), ("MONITOR",)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.execute_command(*command)
    # DEBUG is refused to everybody (enable-debug-command's default).
    with pytest.raises(redis.ResponseError, match="DEBUG command not allowed"):
        app.execute_command("DEBUG", "SLEEP", "0")
    admin = redis.Redis(port=server.port, username="admin", password=ADMIN_PASSWORD)
    assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    text = server.conf.read_text()
    assert PASSWORD not in text and ADMIN_PASSWORD not in text


def test_transactions_survive_redis_killed(server: ConfiguredRedis) -> None:
    """Redis replays its AOF as the default user: off, it must keep its rights, or
    every MULTI/EXEC (kombu's acks, the ledger's moves) is dropped on restart."""
    app = server.app()
    with app.pipeline(transaction=True) as pipe:
        pipe.set("in-a-transaction", "1").lpush("queue", "task").execute()
    app.eval("redis.call('SET', 'in-a-script', '1')", 0)
    assert app.info("persistence")["aof_enabled"] == 1 and server.process is not None
    # Redis writes the AOF before it answers: a killed process loses none of it (a crashed machine may).
    server.process.stop(signal.SIGKILL)
    server.start()
    log = server.process.log()
    assert "CRITICAL" not in log, log[-2000:]
    assert server.app().mget("in-a-transaction", "in-a-script") == [b"1", b"1"]
    assert server.app().lrange("queue", 0, -1) == [b"task"]
