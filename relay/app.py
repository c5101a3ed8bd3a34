"""What one relay process serves: the callback URL, and its probes and metrics."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

from tornado.httputil import HTTPMessageDelegate, HTTPServerRequest
from tornado.routing import Router
from tornado.web import Application

from relay.callback import Callback
from relay.context import Relay
from relay.handler import NotFound
from relay.health import HealthzHandler, LivezHandler, MetricsHandler

# /wechat is the account `default`; /wechat/NAME the others (relay/routes.py).
CALLBACK_PATH = re.compile(r"/wechat(?:/([^/]+))?")


class RelayRouter(Router):
    """The callback URL goes to its own message delegate (relay/callback.py), the rest to `app`."""

    def __init__(self, relay: Relay, app: Application) -> None:
        self.relay = relay
        self.app = app

    def find_handler(self, request: HTTPServerRequest, **_: Any) -> HTTPMessageDelegate | None:
        callback = CALLBACK_PATH.fullmatch(request.path)
        if callback is None:
            return self.app.find_handler(request)
        name = callback.group(1)
        return Callback(self.relay, request, unquote(name) if name else None)


def make_router(relay: Relay) -> RelayRouter:
    app = Application(
        [
            (r"/livez", LivezHandler),
            (r"/healthz", HealthzHandler, {"relay": relay}),
            (r"/healthz/brief", HealthzHandler, {"relay": relay, "brief": True}),
            (r"/metrics", MetricsHandler),
        ],
        default_handler_class=NotFound,
        # Access lines for every request would cost more than the request.
        log_function=lambda handler: None,
    )
    return RelayRouter(relay, app)
