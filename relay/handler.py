"""What every response of a relay carries, and what none ever does."""

from __future__ import annotations

from typing import Any

from tornado.web import HTTPError, RequestHandler


class RelayHandler(RequestHandler):
    def set_default_headers(self) -> None:
        # The echoed echostr is the caller's text: a browser must not take it for HTML.
        self.set_header("X-Content-Type-Options", "nosniff")
        # Which server, and which version, is nobody's business.
        self.clear_header("Server")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Never a traceback to the client, whatever the settings.
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(self._reason)


class NotFound(RelayHandler):
    """Any other path: Tornado's own 404 would carry its Server header."""

    def prepare(self) -> None:
        raise HTTPError(404)
