"""TLS to Redis, as a rediss:// URL asks for it, read the same way by every client.

Between hosts the appliance reaches Redis at
`rediss://USER:PASS@HOST:6380/0?ssl_ca_certs=/etc/wxrelay/redis-ca.crt`:
redis-py's query options, where a missing ssl_cert_reqs means `required` and
the server's certificate must name HOST. redis-py and the relay's own ledger
connection (relay/pipeline.py) read the URL so; Celery's result backend
refuses a rediss:// URL without ssl_cert_reqs, and kombu's broker, given no
SSL options, connects without checking the certificate at all. `options()`
gives both the URL's own reading.

A URL whose CA file is missing, or whose options redis-py would refuse, is a
configuration error found at start (`check`), not a connection failing later
in a log line per retry.
"""

from __future__ import annotations

import os
import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from redis.connection import parse_url

from wechat.exceptions import InvalidConfigError

SCHEME = "rediss"
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def _query(url: str) -> dict[str, str]:
    return {name: values[-1] for name, values in parse_qs(urlsplit(url).query).items()}


def check(url: str, where: str) -> None:
    """Raise InvalidConfigError, one line naming `where` (never the URL: it holds the password)."""
    if urlsplit(url).scheme != SCHEME:
        return
    try:
        parse_url(url)
    except ValueError as exc:
        raise InvalidConfigError(f"{where}: {exc}") from None
    query = _query(url)
    reqs = query.get("ssl_cert_reqs", "required")
    if reqs not in _CERT_REQS:
        raise InvalidConfigError(f"{where}: ssl_cert_reqs must be none, optional or required, not {reqs!r}")
    for name in _FILES:
        path = query.get(name)
        if path is not None and not os.access(path, os.R_OK):
            raise InvalidConfigError(f"{where}: {name}={path}: no such file, or not readable")


def options(url: str) -> dict[str, Any] | None:
    """Celery's broker_use_ssl / redis_backend_use_ssl for this URL: None for plaintext."""
    if urlsplit(url).scheme != SCHEME:
        return None
    query = _query(url)
    found: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS.get(query.get("ssl_cert_reqs", "required"), ssl.CERT_REQUIRED)}
    found.update({name: query[name] for name in _FILES if name in query})
    return found
