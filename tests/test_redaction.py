"""Secrets masked in every log line: by value for the configured ones, by
where they stand for access_tokens and URL passwords; in messages, arguments
and tracebacks; in a real worker's log, whatever its bot logs."""

from __future__ import annotations

import io
import logging

import pytest

from common.redaction import MASK, Redactor, secrets_of
from common.settings import Settings
from simulator import WeChatSimulator
from tests.conftest import AES_KEY, APPID, SECRET, TOKEN
from tests.services import Worker, free_port, wait_until


def logged(redactor: Redactor, emit) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(redactor)
    logger = logging.getLogger(f"redaction-{id(stream)}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_configured_secrets_are_masked_in_messages_arguments_and_tracebacks():
    settings = Settings.from_env(
        {
            "WECHAT_TOKEN": "tok3nValue9",
            "WECHAT_AES_KEY": AES_KEY,
            "WECHAT_APPSECRET": "the-app-secret-1",
            "WXRELAY_REDIS_URL": "redis://wxrelay:redis-pass-77@10.0.0.5:6379/0",
            "WXRELAY_REDIS_ADMIN_PASSWORD": "admin-pass-88",
            "WXRELAY_AI_API_KEY": "sk-model-key-42",
        },
        env_file=None,
    )
    configured = {"tok3nValue9", AES_KEY, "the-app-secret-1", "redis-pass-77", "admin-pass-88", "sk-model-key-42"}
    assert set(secrets_of(settings)) == configured
    redactor = Redactor(secrets_of(settings))

    def emit(logger: logging.Logger) -> None:
        logger.warning("token %s key %s", "tok3nValue9", AES_KEY)
        try:
            raise ValueError("secret the-app-secret-1 and admin-pass-88")
        except ValueError:
            logger.exception("failed")

    text = logged(redactor, emit)
    for secret in secrets_of(settings):
        assert secret not in text
    # The traceback shows the raising line and the error: two of each.
    assert text.count(MASK) == 6 and "ValueError: secret *** and ***" in text


@pytest.mark.parametrize(
    "line, masked",
    [
        ("GET https://api.weixin.qq.com/cgi-bin/token?grant_type=client_credential&appid=wx1&secret=S3CR3T", "S3CR3T"),
        ("POST /cgi-bin/message/custom/send?access_token=72_AbC-dEf&x=1", "72_AbC-dEf"),
        ("gettoken?corpid=ww1&corpsecret=c0rpS3cret", "c0rpS3cret"),
        ("Cannot connect to redis://wxrelay:p4ssw0rd@127.0.0.1:6379/0", "p4ssw0rd"),
        ("rediss://:only-a-password@host:6380/0", "only-a-password"),
    ],
)
def test_secrets_are_masked_by_where_they_stand(line, masked):
    text = logged(Redactor([]), lambda logger: logger.warning(line))
    assert masked not in text and MASK in text


def test_a_workers_log_shows_none_of_what_a_careless_bot_logs(log_dir, stack_env, redis_server, start_relay):
    queue = f"careless{free_port()}"
    env = {**stack_env, "WXRELAY_BOT": "tests/bots/careless_bot.py:bot", "WXRELAY_QUEUE": queue}
    worker = Worker(log_dir, env, queue, redis_server)
    try:
        relay = start_relay(WXRELAY_QUEUE=queue)
        WeChatSimulator(relay.callback, TOKEN, APPID, AES_KEY, mode="safe", deadline=2, deliveries=1).say("hi")
        wait_until(lambda: "cannot sign in with appsecret" in worker.log(), 20, "the bot's error in the log")
        wait_until(lambda: "redis is redis://" in worker.log(), 20, "the bot's print in the log")
    finally:
        worker.stop()
    text = worker.log()
    for secret in ("TOKEN_abc123xyz", SECRET, redis_server.password):
        assert secret not in text, secret
    assert "access_token=***" in text and "appsecret ***" in text and "redis://wxrelay:***@" in text
