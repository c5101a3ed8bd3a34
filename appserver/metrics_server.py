"""Where a worker serves its /metrics: on 127.0.0.1, port WXRELAY_WORKER_METRICS_PORT + the worker's number
(common/worker_number.py: worker0@host serves on the port itself), from its start; 0: nowhere. Never
behind nginx: Prometheus scrapes each worker port on the host.

The threads pool (the default) runs every handler in the worker's own process: prometheus_client's
per-process mode, the process's own HTTP server on a thread, with the process's CPU and memory. The
prefork pool runs them in child processes, whose metrics the worker's process sums from their files
(appserver/prefork_metrics.py). Either way the queue's depth and age are read at each scrape
(appserver/queue_metrics.py).
"""

from __future__ import annotations

import logging
import os

from celery.signals import celeryd_after_setup
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from appserver import metrics, prefork_metrics
from appserver.app import serving, settings
from appserver.queue_metrics import QueueCollector
from common.metric_child import child
from common.worker_number import metrics_port

log = logging.getLogger("wxrelay.metrics")


# Once the worker has set up its logging, before its pool starts (a prefork pool's children, and the first
# message, come after): worker_init comes before the logging, and would say a taken port to nobody.
@celeryd_after_setup.connect
def _serve(sender: str = "", **_: object) -> None:
    port = metrics_port(settings.worker_metrics_port, sender)
    if not port:
        return
    registry = _registry()
    try:
        server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    except (OSError, OverflowError) as exc:
        # Answering messages comes before being measured: the worker runs on, and Prometheus sees its target down.
        log.error(
            "no /metrics: port %d on 127.0.0.1 cannot be used (%s); free it, or set WXRELAY_WORKER_METRICS_PORT "
            "(0: none)",
            port,
            getattr(exc, "strerror", None) or exc,
        )
        return
    # Children of the prefork pool would otherwise hold the port open, and keep it after the worker is gone.
    os.register_at_fork(after_in_child=server.socket.close)
    log.info("metrics on http://127.0.0.1:%d/metrics", port)


def _registry() -> CollectorRegistry:
    children = prefork_metrics.collector()
    if children is None:
        registry = REGISTRY  # this process's metrics, with its CPU, memory and open files
    else:
        registry = CollectorRegistry()
        registry.register(children)
    queues = {name: serving.accounts[name].queue for name in serving.names}
    registry.register(QueueCollector(serving.redis_url, queues))
    # Every account's outcomes from 0: a rate is then defined from the worker's start, not from its first message.
    for name in serving.names:
        child(metrics.IN_FLIGHT, name).set(0)
        for outcome in metrics.OUTCOMES:
            child(metrics.HANDLER_OUTCOMES, name, outcome)
    return registry
