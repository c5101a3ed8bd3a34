"""A bot that logs what it should not: the URL of an API call with its
access_token, and an error carrying the AppSecret. The worker's logs must
show neither."""

from __future__ import annotations

import logging

from appserver import Bot
from common.settings import Settings

bot = Bot()
log = logging.getLogger("careless")
settings = Settings.from_env()


@bot.text()
def careless(msg):
    log.info(
        "calling https://api.weixin.qq.com/cgi-bin/user/info?access_token=%s&openid=%s", "TOKEN_abc123xyz", msg.source
    )
    print(f"redis is {settings.redis_url}")
    raise RuntimeError(f"cannot sign in with appsecret {settings.appsecret}")
