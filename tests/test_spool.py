"""The relay's spool keeps messages on disk, in order, across a restart of its process."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys

from relay.spool import Spool

WRITER = """
import asyncio, os, sys
from pathlib import Path
from relay.spool import Spool

async def main():
    spool = Spool(Path(sys.argv[1]))
    await spool.put("msg:1", "<xml>one</xml>")
    await spool.put("msg:2", "<xml>two</xml>")
    await spool.mark_answered("msg:1")
    print("written", flush=True)
    os.kill(os.getpid(), 9)  # no close, no checkpoint: as a SIGKILLed relay

asyncio.run(main())
"""


def test_spooled_messages_survive_the_relay_being_killed(tmp_path):
    path = tmp_path / "spool" / "relay-8001.sqlite3"
    done = subprocess.run([sys.executable, "-c", WRITER, str(path)], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "written" and done.returncode == -9
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    async def reopen() -> list:
        spool = Spool(path)
        try:
            assert spool.depth == 2
            found = await spool.oldest(10)
            await spool.remove("msg:1")
            assert spool.depth == 1
            return found
        finally:
            spool.close()

    found = asyncio.run(reopen())
    assert [(s.dedupe_key, s.xml, s.answered) for s in found] == [
        ("msg:1", "<xml>one</xml>", True),
        ("msg:2", "<xml>two</xml>", False),
    ]


def test_a_message_spooled_twice_is_kept_once(tmp_path):
    async def twice() -> int:
        spool = Spool(tmp_path / "s.sqlite3")
        try:
            await spool.put("msg:1", "<xml/>")
            await spool.put("msg:1", "<xml/>")
            return spool.depth
        finally:
            spool.close()

    assert asyncio.run(twice()) == 1
