"""BASELINE 2 — not wxrelay: the Tornado handler that polls `AsyncResult.ready()`.

    python -m bench.baselines.polling --port N

As the articles built it: send the task, then check `ready()` again on every
turn of the IOLoop through `IOLoop.add_callback` until the result is there.
The IOLoop stays free between checks, but each check is a blocking Redis
round trip, and the checks of every waiting message follow each other.
(`@asynchronous` and its callback are spelled with a Future today.)
"""

from __future__ import annotations

import argparse
import asyncio
from asyncio import Future

from celery.result import AsyncResult
from tornado.ioloop import IOLoop
from tornado.web import Application, RequestHandler

from bench.baselines.celery_app import TASK, app
from bench.baselines.wechat_io import read_message, write_reply


class CallbackHandler(RequestHandler):
    async def post(self) -> None:
        xml, encrypted = read_message(self)
        result = app.send_task(TASK, args=[xml])
        done: Future[str] = Future()
        IOLoop.current().add_callback(self.check, result, done)
        write_reply(self, await done, encrypted)

    def check(self, result: AsyncResult, done: Future[str]) -> None:
        if result.ready():
            done.set_result(result.get())
        else:
            IOLoop.current().add_callback(self.check, result, done)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines.polling")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port))


async def serve(port: int) -> None:
    Application([(r"/wechat", CallbackHandler)]).listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()
