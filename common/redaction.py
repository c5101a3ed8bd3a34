"""No secret in a log line: a filter on every handler of a process masks them.

The configured secrets (Token, EncodingAESKeys, AppSecret, the Redis
passwords, the AI example bot's API key) are masked wherever they appear, in
messages and tracebacks alike; so is the value of any query parameter or URL
part that carries one (access_token=, secret=, a Redis URL's password):
access_tokens change every two hours and are caught by where they stand, not by value. It is the last
line of defence — the code never logs a secret on purpose — so it must hold
for a library's line too (httpx logs request URLs, with the query string).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from common.accounts import Accounts
from common.settings import Settings

MASK = "***"
_CARRIERS = re.compile(r"(?i)\b(access_token|secret|corpsecret|appsecret|password)=([^&\s'\"]+)")
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@\s/]+)@")
# Shorter values would mask ordinary words; the settings' own rules ask for longer ones.
_SHORTEST = 6


def secrets_of(settings: Settings, accounts: Accounts | None = None) -> list[str]:
    values = [settings.token, settings.aes_key, settings.aes_key_previous, settings.appsecret, settings.ai_api_key]
    values.append(settings.redis_admin_password)
    values.append(unquote(urlsplit(settings.redis_url).password or ""))
    for account in (accounts or {}).values():
        values.extend(account.secrets)
        values.append(unquote(urlsplit(account.redis_url).password or ""))
    return [value for value in values if value]


class Redactor(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these too (an account added by a reload)."""
        known = {*self._secrets, *(s for s in secrets if len(s) >= _SHORTEST)}
        # Longest first: a secret containing another is masked whole.
        self._secrets = sorted(known, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        text = _CARRIERS.sub(lambda match: f"{match.group(1)}={MASK}", text)
        return _URL_PASSWORD.sub(lambda match: f"{match.group(1)}{MASK}@", text)

    def filter(self, record: logging.LogRecord) -> bool:
        # Formatted once, here: the handler's formatter then finds no arguments left to apply.
        record.msg, record.args = self.redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install(settings: Settings, logger: logging.Logger | None = None, accounts: Accounts | None = None) -> Redactor:
    """Mask this process's secrets (and its accounts') in every line the handlers of `logger` (the root) write."""
    redactor = Redactor(secrets_of(settings, accounts))
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(redactor)
    return redactor
