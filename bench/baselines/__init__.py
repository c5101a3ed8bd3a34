"""BASELINES — not part of wxrelay.

The two designs of the well-known "Tornado + Celery for WeChat" articles that
wxrelay replaces, kept as they built them so `make bench` can measure them in
the same run, on the same Redis and the same load:

- `sync_get`: the Tornado handler sends the task and blocks on
  `send_task(...).get()`; the IOLoop serves one message at a time.
- `polling`:  the handler sends the task and polls `AsyncResult.ready()`
  through `IOLoop.add_callback` until the result is there.

Both use `celery_app`: a default Celery app (prefork pool, one process per
core, default prefetch, results in Redis) whose task runs the same bot through
the same parse/route/render code as the appliance. What they share with the
appliance on purpose (signature check, decryption, the bot framework) keeps
the comparison about the architecture. Nothing here is imported by wxrelay.
"""
