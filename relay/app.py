"""What one relay process serves: the callback URL, and its probes and metrics."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from urllib.parse import unquote

from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPMessageDelegate,
    HTTPServerConnectionDelegate,
    RequestStartLine,
    ResponseStartLine,
)
from tornado.web import Application

from relay.callback import Callback
from relay.context import Relay
from relay.handler import NotFound
from relay.health import HealthzHandler, LivezHandler, MetricsHandler

# /wechat is the account `default`; /wechat/NAME the others (relay/routes.py).
CALLBACK_PATH = re.compile(r"/wechat(?:/([^/]+))?")


class RelayServer(HTTPServerConnectionDelegate):
    """The callback URL goes to its own message delegate (relay/callback.py), the rest to `app`."""

    def __init__(self, relay: Relay, app: Application) -> None:
        self.relay = relay
        self.app = app

    def start_request(self, server_conn: object, request_conn: HTTPConnection) -> HTTPMessageDelegate:
        return _ByPath(self, server_conn, request_conn)


class _ByPath(HTTPMessageDelegate):
    """Chooses the request's delegate by its path, as Tornado's routing does, but without the
    HTTPServerRequest it builds first (a deep copy of the query among the rest): the callback
    needs none."""

    def __init__(self, server: RelayServer, server_conn: object, request_conn: HTTPConnection) -> None:
        self.server = server
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.delegate: HTTPMessageDelegate | None = None

    def headers_received(
        self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, RequestStartLine)
        callback = CALLBACK_PATH.fullmatch(start_line.path.partition("?")[0])
        if callback is None:
            self.delegate = self.server.app.start_request(self.server_conn, self.request_conn)
        else:
            name = callback.group(1)
            # The peer's address, as HTTPServer's connection context holds it (no X-Real-IP here: relay/sources.py).
            peer = getattr(getattr(self.request_conn, "context", None), "remote_ip", "") or ""
            self.delegate = Callback(self.server.relay, self.request_conn, peer, unquote(name) if name else None)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        assert self.delegate is not None
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        assert self.delegate is not None
        self.delegate.finish()

    def on_connection_close(self) -> None:
        if self.delegate is not None:
            self.delegate.on_connection_close()


def make_server(relay: Relay) -> RelayServer:
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
    return RelayServer(relay, app)
