"""Routes: which handler answers which message."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wechat.events import BaseEvent
from wechat.messages import BaseMessage, TextMessage

Handler = Callable[[BaseMessage], Any]
Matcher = Callable[[BaseMessage], bool]


@dataclass(frozen=True)
class Route:
    handler: Handler
    matches: Matcher


def message_type(*types: str) -> Matcher:
    def matches(msg: BaseMessage) -> bool:
        return msg.type in types

    return matches


def event(name: str, key: str | None = None) -> Matcher:
    """An event by name (any case), optionally with one EventKey."""
    name = name.lower()

    def matches(msg: BaseMessage) -> bool:
        if not isinstance(msg, BaseEvent) or msg.event != name:
            return False
        return key is None or msg.raw.get("EventKey") == key

    return matches


def text(pattern: str | re.Pattern[str] | None) -> Matcher:
    """Any text, an exact keyword, or a regular expression searched in the text."""

    def matches(msg: BaseMessage) -> bool:
        if not isinstance(msg, TextMessage):
            return False
        if pattern is None:
            return True
        if isinstance(pattern, re.Pattern):
            return pattern.search(msg.content) is not None
        return msg.content.strip() == pattern

    return matches
