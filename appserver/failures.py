"""A worker's failures kept for the operator (common/problems.py), with every secret taken out."""

from __future__ import annotations

import logging
from functools import cache

import redis

from appserver.app import serving, settings
from appserver.connection import client
from common import problems, redaction

log = logging.getLogger("wxrelay.appserver")


@cache
def _redactor() -> redaction.Redactor:
    # The masks the process's log lines get: a bot's exception may quote a URL with its key in it.
    return redaction.Redactor(redaction.secrets_of(settings, serving.accounts))


def note(account: str, kind: str, what: str, detail: str) -> None:
    """Keep one failure; never a failure of its own (the log line beside it says it all the same)."""
    try:
        problems.record(client(), account, kind, what, _redactor().redact(detail))
    except redis.RedisError as exc:
        log.debug("could not keep a %s failure of %s for the operator: %s", kind, account, exc)
