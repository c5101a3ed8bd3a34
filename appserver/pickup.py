"""Replies kept for pickup: how a reply that missed every delivery reaches a user
whose account has no customer-service API (unverified subscription accounts: 48001).

The last delivery answered the account's pickup text instead of `success`; the
finished reply was kept, oldest first, in the user's pickup list (the ledger's
KEEP). The user's next message carries them: its passive reply is the kept
replies in order, then its own. WeChat takes one passive reply per message, so
texts are joined into one; any other reply goes alone, first in line, and the
rest wait for the message after. The ledger takes them off the list in the same
step that stores the reply carrying them (PICKUP_COMPLETE), so none is shown
twice, and puts that reply back first in line should no delivery take it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from appserver.handling import Answer
from wechat.exceptions import ReplyError
from wechat.replies import News, Reply, Text, from_customer_service

# A joined text stays under WeChat's 2048-byte limit on a text message.
TEXT_BYTES = 2000
# The kept replies one message may carry, at most.
CARRY = 20
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Carried:
    """One message's reply with the kept replies it carries: what PICKUP_COMPLETE stores."""

    xml: str
    customer_service: str  # the payload, JSON, for the late path should no delivery take it
    entries: list[str]  # the first entries of the list, as they were
    leftover: str  # this message's own reply as an entry, when it did not fit in ('' when it did)


def entry(payload: dict[str, Any]) -> str:
    """A kept reply as the list holds it: its customer-service payload."""
    return json.dumps(payload, ensure_ascii=False)


def carry(kept: list[str], answer: Answer) -> Carried:
    """The passive reply to `answer`'s message that carries the oldest of `kept` (entries, oldest first)."""
    parts = [_reply(json.loads(item)) for item in kept[:CARRY]]
    own = _reply(answer.customer_service) if answer.customer_service else None
    if answer.xml and own is None:
        # A reply the API cannot carry (a transfer to customer service) goes alone; the kept ones wait.
        return Carried(answer.xml, "", [], "")
    taken = [parts[0]]
    if isinstance(parts[0], Text):
        for part in parts[1:] + ([own] if own is not None else []):
            if not isinstance(part, Text) or _bytes(taken + [part]) > TEXT_BYTES:
                break
            taken.append(part)
    carried = min(len(taken), len(parts))
    own_fits = own is None or len(taken) > len(parts)
    leftover = "" if own_fits else entry(answer.customer_service)  # type: ignore[arg-type]
    reply = Text(_joined(taken)) if len(taken) > 1 else taken[0]
    if isinstance(reply, News) and not answer.for_event:
        reply = News(reply.articles[:1])  # WeChat's limit on the answer to a message
    xml = reply.render(answer.user, answer.account_id, int(time.time()), for_event=answer.for_event)
    return Carried(xml, entry(reply.to_customer_service(answer.user) or {}), kept[:carried], leftover)


def _reply(payload: dict[str, Any]) -> Reply:
    try:
        return from_customer_service(payload)
    except (ReplyError, KeyError, TypeError) as exc:
        raise ReplyError(f"a kept reply cannot be sent passively: {exc}") from None


def _joined(texts: list[Reply]) -> str:
    return SEPARATOR.join(text.content for text in texts)  # type: ignore[attr-defined]


def _bytes(texts: list[Reply]) -> int:
    return len(_joined(texts).encode())
