"""The prefork pool's metrics: its child processes run the handlers, the worker's own process serves /metrics.

prometheus_client's multi-process mode: every process writes its metrics to files in one folder
(PROMETHEUS_MULTIPROC_DIR), and the server sums them (MultiProcessCollector). The mode is chosen when
prometheus_client is first imported, so `prepare` runs in appserver/app.py, before any module that
imports it. The folder is the worker's own, made at its start and removed at its exit: two workers
sharing one would each show the sum of both, and a folder kept across runs would count old runs again.
(A worker killed with SIGKILL leaves its folder behind in the temporary directory.)
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import tempfile
from typing import Any

FOLDER = "PROMETHEUS_MULTIPROC_DIR"


def prepare(pool: str, port: int) -> None:
    """A prefork worker that serves /metrics writes them to a folder of its own; any other keeps them in memory."""
    if pool != "prefork" or not port:
        return
    folder = tempfile.mkdtemp(prefix="wxrelay-metrics-")
    os.environ[FOLDER] = folder
    atexit.register(_remove, folder, os.getpid())


def _remove(folder: str, owner: int) -> None:
    # A child that ever ran atexit's hooks would find this one too: only the worker's own process removes it.
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


def collector() -> Any:
    """The metrics of the worker's processes summed, or None when they are kept in memory (threads pool)."""
    folder = os.environ.get(FOLDER)
    if not folder:
        return None
    # Imported here: this module is imported before prometheus_client may be.
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    class Children(MultiProcessCollector):
        """A child gone (Celery replaced it: the hard time limit, a crash) leaves its counters to the sum,
        not its handlers in flight: prometheus_client's `live` gauges of a dead process are let go."""

        def collect(self) -> Any:
            for path in glob.glob(os.path.join(folder, "gauge_live*_*.db")):
                pid = int(path.rsplit("_", 1)[1].removesuffix(".db"))
                if not _alive(pid):
                    mark_process_dead(pid, folder)
            return super().collect()

    return Children(None, folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
