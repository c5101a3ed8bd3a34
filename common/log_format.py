"""WXRELAY_LOG_FORMAT=json: every log line of a process as one JSON object, for log shippers.

A line carries `time` (ISO 8601, UTC), `level`, `logger`, `process` (its name: MainProcess,
ForkPoolWorker-1, ...), `pid` and `message`; a traceback is the `exception` field, never lines of
its own. A line about one message adds `key` (its ledger key), `account`, and where known `outcome`
and `duration_ms`: the code passes them with logging's `extra=` (`about`), so text mode
writes the same readable line as before and JSON mode has them as fields.

The standard library's json, not python-json-logger: that library formats a traceback again from
the record's exc_info, past the text common/redaction.py masked (a secret in an exception would
reach the line), and copies every attribute a library sets on a record into it, where a shipper
wants the few fields above; keeping both from happening would take more code than this formatter.
"""

from __future__ import annotations

import json
import logging
import time

from common import ledger

JSON = "json"
# What a line about one message may add, from `extra=`.
MESSAGE_FIELDS = ("key", "account", "outcome", "duration_ms")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for field in MESSAGE_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        # The redaction filter leaves a masked exc_text: used as it is, never formatted again.
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # ASCII: the line is the same bytes in any locale, and no Unicode line separator splits it.
        return json.dumps(line, default=str)


def install(log_format: str, logger: logging.Logger | None = None) -> None:
    """In JSON mode, every handler of `logger` (the root) writes JSON lines; text mode keeps each process's own
    readable format."""
    if log_format != JSON:
        return
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(JsonFormatter())


def about(key: str, outcome: str | None = None, since: float | None = None) -> dict[str, object]:
    """`extra=` of a line about the message `key`: its account, what came of it, and the milliseconds since
    `since` (a time.monotonic())."""
    fields: dict[str, object] = {"key": key, "account": ledger.account_of(key)}
    if outcome is not None:
        fields["outcome"] = outcome
    if since is not None:
        fields["duration_ms"] = round((time.monotonic() - since) * 1000, 1)
    return fields
