"""The appserver: Celery workers that run the account owner's bot."""

from appserver.app import app
from appserver.bot import Bot
from wechat import replies

# Imported for their side effects: the tasks, several messages a pop in fair shares of the slots,
# kombu's records of held messages written without waiting, the worker's chores (heartbeat, lease,
# sweep, WeChat's addresses) and its /metrics register with the app, so `celery -A appserver worker` runs them.
from appserver import batch_pop, heartbeat, lease, metrics_server, sweeper, tasks, unacked, wechat_addresses  # noqa: E402,F401,I001  isort: skip

__all__ = ["Bot", "app", "replies"]
