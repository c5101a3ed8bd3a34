"""The rehearsal's bot: `slow <seconds>` answers after that long, anything else is echoed.

Every run of a handler is appended to the runs file as one line, `<dedupe_key> <pid>`,
before the handler does anything else: a file, not Redis, because runs must be
counted while Redis is down, and the pid says which worker ran it. The file is
WXRELAY_CHAOS_RUNS, else `chaos-runs` in the appliance's state folder (the
local appliance hands its processes only the settings it knows).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from appserver import Bot
from common.settings import Settings
from wechat.messages import TextMessage

RUNS_ENV = "WXRELAY_CHAOS_RUNS"
RUNS_FILE = "chaos-runs"

bot = Bot()


def runs_path() -> Path:
    named = os.environ.get(RUNS_ENV)
    return Path(named) if named else Path(Settings.from_env().state_dir) / RUNS_FILE


_RUNS = runs_path()


def ran(msg: TextMessage) -> None:
    # One write of one short line with O_APPEND: lines of concurrent runs never interleave.
    fd = os.open(_RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{msg.dedupe_key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@bot.text(re.compile(r"^slow (\d+(?:\.\d+)?)$"))
def slow(msg: TextMessage) -> str:
    ran(msg)
    time.sleep(float(msg.content.split()[1]))
    return f"slow reply to {msg.content}"


@bot.text()
def echo(msg: TextMessage) -> str:
    ran(msg)
    return f"echo: {msg.content}"
