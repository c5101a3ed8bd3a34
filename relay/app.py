"""The Tornado application of one relay process."""

from __future__ import annotations

from tornado.web import Application

from relay.callback import CallbackHandler
from relay.context import Relay
from relay.handler import NotFound
from relay.health import HealthzHandler, LivezHandler, MetricsHandler


def make_app(relay: Relay) -> Application:
    return Application(
        [
            # /wechat is the account `default`; /wechat/NAME the others (relay/routes.py).
            (r"/wechat(?:/([^/]+))?", CallbackHandler, {"relay": relay}),
            (r"/livez", LivezHandler),
            (r"/healthz", HealthzHandler, {"relay": relay}),
            (r"/healthz/brief", HealthzHandler, {"relay": relay, "brief": True}),
            (r"/metrics", MetricsHandler),
        ],
        default_handler_class=NotFound,
        # Access lines for every request would cost more than the request.
        log_function=lambda handler: None,
    )
