"""The appserver: Celery workers that run the account owner's bot."""

from appserver.app import app
from appserver.bot import Bot
from wechat import replies

# Registered on import, so `celery -A appserver worker` knows them.
from appserver import heartbeat, tasks  # noqa: E402,F401

__all__ = ["Bot", "app", "replies"]
