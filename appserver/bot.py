"""The bot: the one object an account owner builds, by decorating handlers."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import overload

from appserver import routing, wechat_api
from appserver.app import serving
from appserver.routing import Handler, Matcher, Route
from appserver.wechat_api import WeChatAPI
from wechat.messages import BaseMessage

Decorator = Callable[[Handler], Handler]


class Bot:
    """Handlers by message type, event and keyword; the first match wins.

    A handler takes the message and returns a reply (a `str` is a text reply,
    `None` is no reply); it may be `async`.
    """

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self.fallback_handler: Handler | None = None
        # The accounts whose messages it answers, set by the worker that loads it (appserver/tasks.py).
        self.accounts: tuple[str, ...] = ()

    @property
    def api(self) -> WeChatAPI:
        """WeChat's API of the account this bot serves (outside a worker: of the appliance's only account)."""
        names = self.accounts or tuple(serving.accounts)
        if len(names) != 1:
            raise LookupError(f"this bot serves {len(names)} accounts {names}: use bot.api_for(name), or msg.api")
        return wechat_api.api_for(names[0])

    def api_for(self, account: str) -> WeChatAPI:
        """WeChat's API of one of the appliance's accounts, by its name (`default`: the WECHAT_* one)."""
        return wechat_api.api_for(account)

    def route(self, matches: Matcher) -> Decorator:
        def register(handler: Handler) -> Handler:
            self.routes.append(Route(handler, matches))
            return handler

        return register

    def find_handler(self, msg: BaseMessage) -> Handler | None:
        for route in self.routes:
            if route.matches(msg):
                return route.handler
        return self.fallback_handler

    def fallback(self, handler: Handler) -> Handler:
        """Answers whatever no other handler matched, unknown types included."""
        self.fallback_handler = handler
        return handler

    @overload
    def text(self, pattern: Handler) -> Handler: ...
    @overload
    def text(self, pattern: str | re.Pattern[str] | None = None) -> Decorator: ...
    def text(self, pattern: object = None) -> object:
        """`@bot.text("hi")` a keyword, `@bot.text(re.compile(...))` a pattern, `@bot.text()` any text."""
        if callable(pattern) and not isinstance(pattern, re.Pattern):
            return self.route(routing.text(None))(pattern)
        return self.route(routing.text(pattern))  # type: ignore[arg-type]

    def _type(self, handler: Handler | None, *types: str) -> Handler | Decorator:
        register = self.route(routing.message_type(*types))
        return register(handler) if handler is not None else register

    def image(self, handler: Handler | None = None) -> Handler | Decorator:
        return self._type(handler, "image")

    def voice(self, handler: Handler | None = None) -> Handler | Decorator:
        return self._type(handler, "voice")

    def video(self, handler: Handler | None = None) -> Handler | Decorator:
        return self._type(handler, "video", "shortvideo")

    def location(self, handler: Handler | None = None) -> Handler | Decorator:
        return self._type(handler, "location")

    def link(self, handler: Handler | None = None) -> Handler | Decorator:
        return self._type(handler, "link")

    def event(self, name: str, key: str | None = None) -> Decorator:
        """Any event by name, e.g. `@bot.event("templatesendjobfinish")`."""
        return self.route(routing.event(name, key))

    def _event(self, handler: Handler | None, name: str) -> Handler | Decorator:
        register = self.event(name)
        return register(handler) if handler is not None else register

    def subscribe(self, handler: Handler | None = None) -> Handler | Decorator:
        return self._event(handler, "subscribe")

    def unsubscribe(self, handler: Handler | None = None) -> Handler | Decorator:
        return self._event(handler, "unsubscribe")

    def scan(self, handler: Handler | None = None) -> Handler | Decorator:
        return self._event(handler, "scan")

    def view(self, handler: Handler | None = None) -> Handler | Decorator:
        return self._event(handler, "view")

    def click(self, key: str | Handler | None = None) -> Handler | Decorator:
        """`@bot.click("MENU_KEY")` one menu key, `@bot.click` any click."""
        if callable(key):
            return self.event("click")(key)
        return self.event("click", key)
