"""Find the bot named by WXRELAY_BOT, the way gunicorn and uvicorn find apps."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from appserver.bot import Bot


class BotLoadError(Exception):
    pass


def load_bot(spec: str) -> Bot:
    """`package.module:attribute` or `path/to/file.py:attribute` (attribute defaults to `bot`)."""
    target, _, attribute = spec.partition(":")
    attribute = attribute or "bot"
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.is_file():
            raise BotLoadError(f"WXRELAY_BOT: no file {path}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise BotLoadError(f"WXRELAY_BOT: cannot import {target!r}: {exc}") from exc
    bot = getattr(module, attribute, None)
    if not isinstance(bot, Bot):
        raise BotLoadError(f"WXRELAY_BOT: {spec!r} is not an appserver.Bot")
    return bot
