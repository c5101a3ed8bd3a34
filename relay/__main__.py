"""`python -m relay --port N`: one relay process."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from tornado.httpserver import HTTPServer

from common import accounts, cpu_pinning, log_format, open_files, redaction
from common.accounts import Accounts
from common.redaction import Redactor
from common.settings import Settings
from relay.app import make_server
from relay.collector import collect_on_a_schedule
from relay.context import Relay
from relay.metrics import watch_loop_lag
from wechat.exceptions import InvalidConfigError

log = logging.getLogger("wxrelay.relay")


async def serve(settings: Settings, served: Accounts, address: str, port: int, redactor: Redactor) -> None:
    try:
        relay = Relay(settings, served, port, redactor)
    except ValueError as exc:  # a Redis URL the relay cannot use
        raise InvalidConfigError(str(exc)) from None
    open_files.raise_limit()
    if settings.cpu_pinning:
        core = cpu_pinning.pin(port - settings.relay_port)
        if core is not None:
            log.info("relay on port %d keeps to core %d", port, core)
    await relay.start()
    # A thousand held deliveries are some 100,000 objects the collector walks again and again; what
    # start-up made (modules, settings, routes: as many again) lives as long as the process, and
    # frozen, it is never walked: measured at 100 slow msg/s, a collection of every generation then
    # touches about 55,000 objects instead of 110,000 (some 50 ms of the loop instead of 100).
    gc.freeze()
    lag_probe = watch_loop_lag()
    collector = collect_on_a_schedule(lambda: relay.dispatcher.in_flight)
    # No xheaders: the client's address is X-Real-IP only when nginx says so (relay/sources.py).
    server = HTTPServer(make_server(relay), idle_connection_timeout=60)
    server.listen(port, address)
    log.info("relay listening on %s:%d", address, port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, relay.reload)
    await stopping.wait()
    # Stop taking requests, then let the ones in flight answer WeChat.
    server.stop()
    deadline = loop.time() + settings.wechat_timeout
    while relay.dispatcher.in_flight > 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    lag_probe.stop()
    collector.stop()
    await relay.stop()
    log.info("relay on port %d stopped", port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay", description="One wxrelay relay process.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env().validate()
        served = accounts.load(settings)
    except InvalidConfigError as exc:
        print(f"wxrelay relay: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log_format.install(settings.log_format)
    redactor = redaction.install(settings, accounts=served)
    try:
        asyncio.run(serve(settings, served, args.address, args.port, redactor))
    except InvalidConfigError as exc:
        print(f"wxrelay relay: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
