"""TEST ONLY: the single-host rehearsal's bot (tests/deploy/inventory). It answers as the example bot
does (appserver/example_bot.py); `slow <seconds>` answers the same after that long. Each run of the
handler appends `start <dedupe_key>` to a file as it begins and `done <dedupe_key>` as it ends, so
the rehearsal counts runs per message across a crash of the whole host: a file outside Redis, whose
own state is what the crash puts to the test, written before the handler goes on.
"""

from __future__ import annotations

import os
import re
import time

from appserver import Bot
from wechat.messages import TextMessage

# In the service user's home (roles/wxrelay: wxrelay_home); the rehearsal reads it from outside.
RUNS = "/var/lib/wxrelay/rehearsal-runs"
SLOW = re.compile(r"^slow (\d+(?:\.\d+)?)$")

bot = Bot()


def record(event: str, msg: TextMessage) -> None:
    # One write of one short line with O_APPEND: lines of concurrent runs never interleave.
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {msg.dedupe_key}\n".encode())
    finally:
        os.close(fd)


@bot.text()
def echo(msg: TextMessage) -> str:
    record("start", msg)
    slow = SLOW.match(msg.content)
    if slow:
        time.sleep(float(slow.group(1)))
    record("done", msg)
    return f"Hi {msg.source}, you said: {msg.content}"
