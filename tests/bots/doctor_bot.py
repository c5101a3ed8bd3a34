"""The doctor's test bot: `slow N` answers after N seconds (to miss WeChat's deliveries and go late);
anything else fails, with the AppSecret in its error, which the doctor must not show."""

from __future__ import annotations

import re
import time

from appserver import Bot
from common.settings import Settings

bot = Bot()
settings = Settings.from_env()


@bot.text(re.compile(r"^slow [0-9.]+$"))
def slow(msg):
    time.sleep(float(msg.content.split()[1]))
    return f"slow reply to {msg.content}"


@bot.text()
def careless(msg):
    raise RuntimeError(f"cannot sign in with appsecret {settings.appsecret}")
