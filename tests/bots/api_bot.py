"""Bots of the API and typing tests: handlers that call WeChat's API through `msg.api` and `bot.api`,
sync and async, and slow ones that outlast WeChat's first delivery."""

from __future__ import annotations

import asyncio
import re
import time

from appserver import Bot, replies
from appserver.wechat_api import WeChatAPIError

bot = Bot()
typer = Bot()


@bot.text("whoami")
def whoami(msg):
    return f"you are {msg.api.user_info(msg.source)['nickname']}"


@bot.text("whoami async")
async def whoami_async(msg):
    info = await msg.api.aio.user_info(msg.source)
    return f"you are {info['nickname']}"


@bot.text("whoami bot")
def whoami_bot(msg):
    return f"you are {bot.api.user_info(msg.source)['nickname']}"


@bot.text("tour")
def tour(msg):
    """Every typed helper once, in a sync handler."""
    api = msg.api
    uploaded = api.upload_media("image", b"\x89PNG fake picture", "cat.png")
    picture = api.download_media(uploaded["media_id"])
    template = api.send_template(msg.source, "TEMPLATE_ID", {"name": {"value": "张三"}}, url="https://example.com")
    msgid = template["msgid"]
    api.create_menu({"button": [{"type": "click", "name": "今日歌曲", "key": "V1001"}]})
    menu = api.get_menu()["menu"]["button"][0]["name"]
    api.delete_menu()
    try:
        api.get_menu()
    except WeChatAPIError as exc:
        gone = exc.errcode
    api.send_text(msg.source, "文字")
    api.send_image(msg.source, uploaded["media_id"])
    api.send_news(msg.source, [replies.Article("标题", "描述", "https://example.com/p.png", "https://example.com")])
    api.typing(msg.source)
    ips = api.call("GET", "cgi-bin/getcallbackip")["ip_list"]
    return f"tour: {picture!r} {msgid} {menu} {gone} {ips}"


@bot.text("tour async")
async def tour_async(msg):
    """The async client: a file there and back, a message, an errcode."""
    api = msg.api.aio
    uploaded = await api.upload_media("voice", b"fake voice", "hello.amr")
    voice = await api.download_media(uploaded["media_id"])
    await api.send_text(msg.source, "异步")
    try:
        await api.download_media("no_such_media")
    except WeChatAPIError as exc:
        return f"tour async: {voice!r} {exc.errcode} {exc.endpoint}"
    return "tour async: no error"


@typer.text(re.compile(r"^slow (\d+(?:\.\d+)?)$"))
def slow(msg):
    time.sleep(float(msg.content.split()[1]))
    return f"slow reply to {msg.content}"


@typer.text(re.compile(r"^slow async (\d+(?:\.\d+)?)$"))
async def slow_async(msg):
    await asyncio.sleep(float(msg.content.split()[2]))
    return f"slow reply to {msg.content}"


@typer.text()
def quick(msg):
    return f"quick reply to {msg.content}"
