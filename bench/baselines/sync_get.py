"""BASELINE 1 — not wxrelay: the Tornado handler that blocks on `.get()`.

    python -m bench.baselines.sync_get --port N

As the articles built it: send the task, wait for its result synchronously,
answer. The IOLoop is blocked for the whole round trip through Celery, so the
process serves one message at a time.
"""

from __future__ import annotations

import argparse
import asyncio

from tornado.web import Application, RequestHandler

from bench.baselines.celery_app import TASK, app
from bench.baselines.wechat_io import read_message, write_reply

# Only so that a lost worker cannot hang the benchmark; no measured run waits this long.
GET_TIMEOUT = 60


class CallbackHandler(RequestHandler):
    def post(self) -> None:
        xml, encrypted = read_message(self)
        reply = app.send_task(TASK, args=[xml]).get(timeout=GET_TIMEOUT)
        write_reply(self, reply, encrypted)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines.sync_get")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port))


async def serve(port: int) -> None:
    Application([(r"/wechat", CallbackHandler)]).listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()
