"""The owner's env file: written on the first run with fresh secrets, and the
resolved settings written into the state folder for the running processes."""

from __future__ import annotations

import os
import re
import secrets
import string
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

from common.settings import SETTINGS

PLACEHOLDER_APPID = "wx0000000000000000"
_ALPHANUMERIC = string.ascii_letters + string.digits
_BARE = re.compile(r"[A-Za-z0-9_./:@%+,=-]*")

_HEADER = """\
# wxrelay's settings on this machine, written by the first `make run`.
# Variables set in the environment override the ones here; the README lists them all.
"""


def random_text(length: int) -> str:
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


def fresh_values(redis_port: str = SETTINGS["redis_port"].default) -> dict[str, str]:
    """What a first run needs: a token, an EncodingAESKey, a placeholder AppID, a private Redis."""
    password = random_text(32)
    return {
        "WECHAT_TOKEN": random_text(32),
        "WECHAT_AES_KEY": random_text(43),
        # WeChat's console shows the real one; any appid works with the simulator.
        "WECHAT_APPID": PLACEHOLDER_APPID,
        "WXRELAY_REDIS_PORT": redis_port,
        "WXRELAY_REDIS_URL": f"redis://wxrelay:{password}@127.0.0.1:{redis_port}/0",
    }


def ensure(path: Path) -> list[str]:
    """Create the env file, or add what the local appliance needs and it lacks; return the names written.

    Existing lines are never changed: the file is the owner's.
    """
    existing = dotenv_values(path) if path.is_file() else {}
    port = existing.get("WXRELAY_REDIS_PORT") or SETTINGS["redis_port"].default
    missing = {name: value for name, value in fresh_values(port).items() if name not in existing}
    if not missing:
        return []
    text = path.read_text() if path.is_file() else _HEADER
    if text and not text.endswith("\n"):
        text += "\n"
    text += "".join(line(name, value) for name, value in missing.items())
    write_private(path, text)
    return list(missing)


def line(name: str, value: str) -> str:
    if _BARE.fullmatch(value):
        return f"{name}={value}\n"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{name}="{escaped}"\n'


def render(values: Mapping[str, str], header: str) -> str:
    return header + "".join(line(name, value) for name, value in values.items())


def write_private(path: Path, text: str) -> None:
    """Write a file that holds secrets, readable by its owner only, from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.chmod(path, 0o600)
