"""The README's promises: its example bot works as shown, its table lists every setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appserver.handling import handle
from appserver.loader import load_bot
from common.settings import SETTINGS
from simulator.messages import event_message, text_message, to_xml
from wechat.parser import parse_xml

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def between(marker: str) -> str:
    block = README.split(f"<!-- {marker} -->")[1].split(f"<!-- /{marker} -->")[0]
    return re.search(r"```\w*\n(.*?)```", block, re.S).group(1)


@pytest.fixture(scope="module")
def example_bot(tmp_path_factory):
    path = tmp_path_factory.mktemp("readme") / "mybot.py"
    path.write_text(between("example-bot"))
    return load_bot(f"{path}:bot")


def answer(bot, redis_server, xml: str) -> dict | None:
    reply = handle(xml, bot, redis_server.client(), 60, 5).xml
    return parse_xml(reply) if reply else None


def text(bot, redis_server, content: str, user: str = "o_readme") -> str | None:
    reply = answer(bot, redis_server, to_xml(text_message(content, user=user, account="gh_readme")))
    return reply and reply.get("Content")


def test_the_example_bot_answers_as_the_readme_says(example_bot, redis_server):
    assert text(example_bot, redis_server, "hello") == "Hi o_readme"
    assert text(example_bot, redis_server, "weather Shenzhen") == "Sunny in Shenzhen"
    assert [text(example_bot, redis_server, "count", "o_counter") for _ in range(2)] == [
        "You said count 1 times",
        "You said count 2 times",
    ]
    assert text(example_bot, redis_server, "anything else") is None
    welcome = answer(example_bot, redis_server, to_xml(event_message("subscribe", user="o_r", account="gh_r")))
    assert welcome["MsgType"] == "news" and welcome["ArticleCount"] == "1"
    click = answer(example_bot, redis_server, to_xml(event_message("CLICK", "MENU_KEY", user="o_r", account="gh_r")))
    assert click["Content"] == "You clicked the menu"


def test_the_configuration_table_lists_every_setting_with_its_default():
    for setting in SETTINGS.values():
        default = f"`{setting.default}`" if setting.default else "—"
        assert f"| `{setting.name}` | {default} |" in README, setting.name
