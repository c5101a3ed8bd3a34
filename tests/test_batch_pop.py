"""A worker takes as many queued messages in one BLMPOP as it has room for (appserver/batch_pop.py)."""

from __future__ import annotations

from celery import Celery

from simulator.messages import text_message, to_xml
from tests.services import RedisServer, Worker
from wechat.parser import parse_xml

QUEUED = 40


def test_a_worker_takes_a_backlog_several_messages_a_round_trip(log_dir, stack_env):
    # A Redis of its own: its command counts are this worker's alone.
    redis_server = RedisServer(log_dir)
    client = Celery("batch-client", broker=redis_server.url, backend=redis_server.url)
    client.conf.update(task_serializer="json", accept_content=["json"], result_accept_content=["json"])
    worker = None
    try:
        pending = [
            client.send_task("wxrelay.handle", args=[to_xml(text_message(f"m{n}", user="o_u"))], queue="batch")
            for n in range(QUEUED)
        ]
        env = {**stack_env, "WXRELAY_REDIS_URL": redis_server.url, "WXRELAY_QUEUE": "batch",
               "WXRELAY_WORKER_CONCURRENCY": str(QUEUED)}  # fmt: skip
        worker = Worker(log_dir, env, "batch", redis_server)
        replies = [parse_xml(result.get(timeout=30))["Content"] for result in pending]
        stats = redis_server.client().info("commandstats")
    finally:
        if worker is not None:
            worker.stop()
        client.close()
        redis_server.stop()
    assert replies == [f"echo: m{n}" for n in range(QUEUED)]
    assert "cmdstat_brpop" not in stats
    # 40 messages, at most 8 a pop: 5 pops, and one more each second the queue then stood empty.
    assert stats["cmdstat_blmpop"]["calls"] < QUEUED / 2
