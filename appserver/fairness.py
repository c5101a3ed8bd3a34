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
widen the prefetch and hold no slot (appserver/awaiting.py). The decision is made where the worker chooses the
queues of its next pop (appserver/batch_pop.py), and how many it may take
there; an account out of room is left out of it, and is back in it at the
next poll after one of its handlers ends.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from appserver.awaiting import awaiting


def rooms(queues: Sequence[str], held: Counter[str], slots: int) -> dict[str, int]:
    """How many more messages a worker may take from each queue, given what it holds of each."""
    total = sum(held[queue] for queue in queues)
    guaranteed = slots // (2 * len(queues)) if queues else 0
    if len(queues) < 2 or not guaranteed:
        # More accounts than half the slots: no share to guarantee, kombu's turns alone.
        return {queue: slots - total for queue in queues}
    unused = {queue: max(0, guaranteed - held[queue]) for queue in queues}
    reserved = sum(unused.values())
    return {queue: slots - total - (reserved - unused[queue]) for queue in queues}


def admissible(queues: Sequence[str], held: Counter[str], slots: int) -> list[str]:
    """The queues a worker may take one more message from, given what it holds of each."""
    room = rooms(queues, held, slots)
    return [queue for queue in queues if room[queue] >= 1]


def held(qos: Any) -> Counter[str]:
    """Messages the channel holds unacknowledged, by queue."""
    # list() copies in one step: a handler thread may acknowledge one meanwhile.
    delivered = list(qos._delivered.items())
    acked = set(qos._dirty)
    return Counter(message.delivery_info.get("routing_key") for tag, message in delivered if tag not in acked)


def consumable(channel: Any, most: int) -> tuple[list[str], int]:
    """The queues of kombu's next turn that have room, and how many messages (at most `most`) each may
    surely take: kombu's round robin over the queues, less those out of room."""
    queues = channel._queue_cycle.consume(len(channel.active_queues))
    qos = channel.qos
    if not qos.prefetch_count:
        return queues, most
    # Awaiting handlers hold a coroutine, not a slot (appserver/awaiting.py): shares are of the slots.
    widened = awaiting.widened()
    room = rooms(queues, held(qos) - widened, qos.prefetch_count - sum(widened.values()))
    allowed = [queue for queue in queues if room[queue] >= 1]
    return allowed, min([most, *(room[queue] for queue in allowed)])
