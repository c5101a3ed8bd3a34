"""The benchmark bots behind one bot, chosen by the message's first word
("echo …", "io …", "slow …", "slowasync …"), so one start of each system serves
every scenario.

The routing costs one failed regular-expression search per bot ahead of the
one that answers: microseconds against a millisecond-scale message.
"""

import re

from appserver import Bot
from bench.bots import echo, io_bound, slow, slow_async

bot = Bot()
bot.text(re.compile(r"^io "))(io_bound.wait_for_io)
bot.text(re.compile(r"^slow "))(slow.slow)
bot.text(re.compile(r"^slowasync "))(slow_async.slow_async)
bot.text()(echo.echo)
