"""Fair shares of a worker's handler slots among the accounts it serves.

Each account has its own queue, and kombu's Redis transport already takes
from the queues in turn. Turns are not enough: a handler holds its slot for
as long as it runs, so an account whose bot blocks for 30 s under a burst
would fill every slot, and the next account's messages, however quick,
would wait behind it. So each account is guaranteed a share of the slots
(half the slots, split among the accounts; none when there are more accounts
than half the slots, where only the turns remain), and may borrow beyond it only
what leaves every other account's guarantee free: a worker takes a message
of an account from its queue only while, that message started, the slots
still free cover what the others are guaranteed and do not use. Alone, an
account may use every slot.

The slots are kombu's: messages taken from the queues and not yet
acknowledged (acknowledged when the handler ends: task_acks_late), which is
the prefetch count — less the async handlers awaiting on a coroutine, which
widen the prefetch and hold no slot (appserver/awaiting.py). The decision is made where kombu chooses the queues of
its next BRPOP; an account out of room is left out of it, and is back in
it at the next poll after one of its handlers ends.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from kombu.transport import redis as kombu_redis

from appserver.awaiting import awaiting


def admissible(queues: Sequence[str], held: Counter[str], slots: int) -> list[str]:
    """The queues a worker may take one more message from, given what it holds of each."""
    guaranteed = slots // (2 * len(queues))
    if len(queues) < 2 or not guaranteed:
        # More accounts than half the slots: no share to guarantee, kombu's turns alone.
        return list(queues)
    unused = {queue: max(0, guaranteed - held[queue]) for queue in queues}
    total = sum(held[queue] for queue in queues)
    reserved = sum(unused.values())
    return [queue for queue in queues if total + 1 + reserved - unused[queue] <= slots]


def held(qos: Any) -> Counter[str]:
    """Messages the channel holds unacknowledged, by queue."""
    # list() copies in one step: a handler thread may acknowledge one meanwhile.
    delivered = list(qos._delivered.items())
    acked = set(qos._dirty)
    return Counter(message.delivery_info.get("routing_key") for tag, message in delivered if tag not in acked)


class _FairCycle:
    """kombu's round robin over the queues, less those out of room."""

    def __init__(self, cycle: Any, channel: Any) -> None:
        self._cycle = cycle
        self._channel = channel

    def consume(self, n: int) -> list[str]:
        queues = self._cycle.consume(n)
        qos = self._channel.qos
        # Awaiting handlers hold a coroutine, not a slot (appserver/awaiting.py): shares are of the slots.
        widened = awaiting.widened()
        slots = (qos.prefetch_count or 0) - sum(widened.values())
        allowed = set(admissible(queues, held(qos) - widened, slots))
        return [queue for queue in queues if queue in allowed]

    def update(self, *args: Any) -> Any:
        return self._cycle.update(*args)

    def rotate(self, last_used: str) -> Any:
        return self._cycle.rotate(last_used)


_brpop_start = kombu_redis.Channel._brpop_start


def _fair_brpop_start(channel: Any, timeout: float | None = None) -> None:
    if not isinstance(channel._queue_cycle, _FairCycle):
        channel._queue_cycle = _FairCycle(channel._queue_cycle, channel)
    _brpop_start(channel, timeout)


kombu_redis.Channel._brpop_start = _fair_brpop_start
