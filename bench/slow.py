"""Scenario 3: a slow bot behind WeChat's real delivery policy.

Each message is sent by a simulated WeChat (simulator.WeChatSimulator, one
thread a message): a delivery is cut after 5 s and retried, three deliveries
in all. The 8 s bot cannot answer the first delivery; the reply must arrive
on the second, and the handler must run once per message however many
deliveries WeChat makes.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import callbacks
from bench.systems import Baseline, System
from simulator import WeChatSimulator, text_message

WECHAT_DEADLINE = 5.0
WECHAT_DELIVERIES = 3


def run(system: System, messages: int, mode: str = "plain") -> dict[str, Any]:
    """Send `messages` slow messages at once; return what WeChat and the bot saw."""
    simulator = WeChatSimulator(
        system.url,
        callbacks.TOKEN,
        appid=callbacks.APPID,
        aes_key=callbacks.AES_KEY,
        mode=mode,
        deadline=WECHAT_DEADLINE,
        deliveries=WECHAT_DELIVERIES,
        account=callbacks.ACCOUNT,
    )
    ids = [callbacks.new_msg_id() for _ in range(messages)]

    def send(msg_id: int) -> tuple[int, Any]:
        message = text_message(f"slow {msg_id}", user=f"o_bench_slow_{msg_id % 1000:03d}", account=simulator.account,
                               msg_id=msg_id)  # fmt: skip
        try:
            return msg_id, simulator.send(message)
        except Exception as exc:  # a reply WeChat would refuse counts as not delivered
            return msg_id, exc

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=messages) as pool:
        outcomes = list(pool.map(send, ids))
    window = time.monotonic() - started

    delivered, on_delivery, elapsed = 0, Counter(), []
    for msg_id, result in outcomes:
        if isinstance(result, Exception) or not result.answered:
            continue
        if result.text == f"slow {msg_id}":
            delivered += 1
            on_delivery[result.delivery] += 1
            elapsed.append(result.elapsed)
    return {
        "system": system.name,
        "messages": messages,
        "mode": mode,
        "delivered": delivered,
        "delivered_pct": round(100 * delivered / messages, 1) if messages else 0.0,
        "on_delivery": {str(n): on_delivery.get(n, 0) for n in range(1, WECHAT_DELIVERIES + 1)},
        "reply_seconds_max": round(max(elapsed), 2) if elapsed else None,
        "window_s": round(window, 1),
        "_ids": [str(i) for i in ids],
    }


def count_executions(system: System, result: dict[str, Any], settle: float) -> dict[str, Any]:
    """Handler executions per message: run so far, plus (for a baseline) the tasks still waiting to run.

    The appliance is given `settle` seconds to finish the handlers it started;
    a baseline's queue can hold minutes of 8 s tasks, so what it has queued is
    counted from Redis instead of waited for.
    """
    ids = set(result.pop("_ids"))
    deadline = time.monotonic() + settle
    while True:
        runs = {k: v for k, v in system.slow_runs().items() if k in ids}
        if isinstance(system, Baseline) or time.monotonic() > deadline or system.settle(0.1):
            break
        time.sleep(0.2)
    queued = Counter(i for i in system.queued_msg_ids() if i in ids) if isinstance(system, Baseline) else Counter()
    per_message = Counter(runs)
    per_message.update(queued)
    executions = sum(per_message.values())
    result.update(
        executions_started=sum(runs.values()),
        executions_queued=sum(queued.values()),
        executions=executions,
        duplicate_executions=sum(n - 1 for n in per_message.values() if n > 1),
        messages_never_run=len(ids - set(per_message)),
    )
    return result
