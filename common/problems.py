"""What went wrong lately, kept for the operator: the bot's failures and the late replies WeChat refused.

The workers' logs say it too, but an operator asking what is wrong (`make doctor`, `make status`) should
not have to read every worker's log on every host: each failure is also added to a short list in Redis,
which any process of the appliance can read and group. Only failures are kept, so a healthy appliance
writes nothing here; the list is capped, so a bot failing on every message cannot fill Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import redis

from common.ledger import PREFIX

KEY = PREFIX + "problems"
# Enough for an hour of a bot failing now and then; a bot failing on everything fills it in seconds.
KEPT = 1000
# Long enough to outlive a weekend nobody looked; an appliance with no failures keeps no list.
TTL = 7 * 86400

HANDLER = "handler"  # the bot raised, or overran its time limit: `what` is the handler's name
LATE = "late"  # a late reply WeChat refused or that failed for good: `what` is the errcode


@dataclass(frozen=True)
class Problem:
    at: float
    account: str
    kind: str
    what: str
    detail: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def record(client: redis.Redis, account: str, kind: str, what: str, detail: str) -> None:
    """Keep one failure (the caller has taken every secret out of `detail`)."""
    problem = Problem(time.time(), account, kind, what, detail[:300])
    pipe = client.pipeline(transaction=False)
    pipe.lpush(KEY, problem.to_json())
    pipe.ltrim(KEY, 0, KEPT - 1)
    pipe.expire(KEY, TTL)
    pipe.execute()


def since(client: redis.Redis, moment: float) -> list[Problem]:
    """The failures kept from `moment` on, newest first."""
    found = []
    for raw in client.lrange(KEY, 0, KEPT - 1):
        try:
            problem = Problem(**json.loads(raw))
        except (ValueError, TypeError):
            continue  # not ours to judge: another version's line
        if problem.at < moment:
            break
        found.append(problem)
    return found


@dataclass(frozen=True)
class Group:
    """Failures alike (one account, kind and handler or errcode): how many, and the latest of them."""

    count: int
    latest: Problem


def grouped(problems: Iterable[Problem]) -> list[Group]:
    """Alike failures together, the most frequent first."""
    groups: dict[tuple[str, str, str], list[Problem]] = {}
    for problem in problems:
        groups.setdefault((problem.account, problem.kind, problem.what), []).append(problem)
    found = [Group(len(alike), max(alike, key=lambda p: p.at)) for alike in groups.values()]
    return sorted(found, key=lambda group: (-group.count, -group.latest.at))
