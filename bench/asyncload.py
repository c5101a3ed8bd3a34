"""An asyncio WeChat: offers messages open-loop, each delivered as WeChat delivers it.

    python -m bench.asyncload SPEC.json OUT.json

One coroutine a message instead of the simulator's thread a message, so
thousands of conversations can be open at once, and a minimal HTTP/1.1 client
with a keep-alive pool (httpx's pool spends milliseconds of CPU a request
once hundreds of connections are open: the generator would need a core). Message n goes out at
n / rate seconds whatever the answers; each delivery is cut after `deadline`
seconds (the whole exchange, as WeChat counts it) and followed by the same
request again, `deliveries` in all, as `simulator.WeChatSimulator.deliver`
does. Requests are built, and replies read, by the simulator's own code.

It runs as a process of its own so that its CPU is measured apart from the
system's and the harness's, and its clock is not slowed by the harness's
threads. SPEC holds: url, token, appid, aes_key, account, mode, rate,
duration, deadline, deliveries, text (a format with {id}), user (likewise).
OUT gets one entry per message and the generator's own figures.
"""

from __future__ import annotations

import asyncio
import json
import resource
import secrets
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from simulator import ReplyVerificationError, WeChatSimulator, text_message


class Generator:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.simulator = WeChatSimulator(
            spec["url"],
            spec["token"],
            appid=spec["appid"],
            aes_key=spec["aes_key"],
            mode=spec["mode"],
            deadline=spec["deadline"],
            deliveries=spec["deliveries"],
            account=spec["account"],
        )
        self.outstanding = 0
        self.peak_outstanding = 0
        self.late_starts = 0
        self.results: list[dict[str, Any]] = []

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        rate, duration = float(spec["rate"]), float(spec["duration"])
        count = max(1, round(rate * duration))
        interval = 1 / rate
        base = secrets.randbits(40) << 20
        client = Client(spec["url"])
        try:
            started = time.monotonic()
            tasks = []
            for n in range(count):
                slot = started + n * interval
                wait = slot - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -interval:
                    self.late_starts += 1
                tasks.append(asyncio.create_task(self.converse(client, base + n)))
            offered_s = time.monotonic() - started
            await asyncio.gather(*tasks)
            ended = time.monotonic()
        finally:
            client.close()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "started": started,
            "ended": ended,
            "offered": count,
            "offered_s": round(offered_s, 2),
            "late_starts": self.late_starts,
            "peak_outstanding": self.peak_outstanding,
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "max_rss_mb": _peak_rss_mb(),
            "messages": self.results,
        }

    async def converse(self, client: Client, msg_id: int) -> None:
        """One message, up to `deliveries` deliveries."""
        spec, simulator = self.spec, self.simulator
        user = spec["user"].format(id=msg_id)
        text = spec["text"].format(id=msg_id)
        message = text_message(text, user=user, account=simulator.account, msg_id=msg_id)
        params, body = simulator.build_request(message)
        self.outstanding += 1
        self.peak_outstanding = max(self.peak_outstanding, self.outstanding)
        sent = time.monotonic()
        outcomes: list[str] = []
        entry: dict[str, Any] = {"id": str(msg_id), "user": user, "text": text, "sent": sent}
        try:
            for delivery in range(1, simulator.deliveries + 1):
                began = time.monotonic()
                outcome, answer = await self.post(client, params, body)
                if time.monotonic() - began > simulator.deadline:
                    outcome = "timeout"
                outcomes.append(str(outcome))
                if outcome != 200:
                    continue
                entry["delivery"] = delivery
                entry["elapsed"] = round(time.monotonic() - sent, 3)
                try:
                    reply, _ = simulator._read_reply(answer)  # the simulator's own reading of a reply
                except ReplyVerificationError as exc:
                    entry["bad_reply"] = str(exc)[:200]
                    break
                if reply is None:
                    entry["reply"] = None  # `success`: WeChat stops delivering, the user sees nothing yet
                elif reply.get("MsgType") == "text":
                    entry["reply"] = reply.get("Content")
                else:
                    entry["bad_reply"] = f"a {reply.get('MsgType')} reply"
                break
        finally:
            self.outstanding -= 1
        entry["outcomes"] = outcomes
        self.results.append(entry)

    async def post(self, client: Client, params: dict[str, str], body: bytes) -> tuple[Any, bytes]:
        try:
            return await asyncio.wait_for(client.post(params, body), self.simulator.deadline)
        except TimeoutError:
            return "timeout", b""
        except (OSError, EOFError, ValueError):
            return "unreachable", b""


class Client:
    """POSTs to one URL over HTTP/1.1 keep-alive connections: an idle one if there is one, else a new
    one. A delivery cut short closes its connection, as WeChat's hang-up does."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path or "/"
        self.netloc = parts.netloc
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, params: dict[str, str], body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {self.path}?{urlencode(params)} HTTP/1.1\r\nHost: {self.netloc}\r\n"
            f"Content-Type: text/xml\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        while self.idle:
            reader, writer = self.idle.pop()
            try:
                return await self.exchange(reader, writer, head + body)
            except (OSError, EOFError):
                # An idle connection the server had closed: nothing was answered, try another.
                writer.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return await self.exchange(reader, writer, head + body)

    async def exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> tuple[int, bytes]:
        reused = False
        try:
            writer.write(request)
            status, headers = await self.read_head(reader)
            if headers.get("transfer-encoding", "").lower() == "chunked":
                content = await self.read_chunked(reader)
            elif "content-length" in headers:
                content = await reader.readexactly(int(headers["content-length"]))
            else:
                content = await reader.read()
                headers["connection"] = "close"
            if headers.get("connection", "").lower() != "close":
                self.idle.append((reader, writer))
                reused = True
            return status, content
        except asyncio.IncompleteReadError as exc:
            raise EOFError("connection closed mid-answer") from exc
        finally:
            if not reused:
                writer.close()

    @staticmethod
    async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        return status, headers

    @staticmethod
    async def read_chunked(reader: asyncio.StreamReader) -> bytes:
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def _peak_rss_mb() -> float | None:
    """This process's own peak RSS (VmHWM: ru_maxrss would carry the forking parent's across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def main(argv: list[str] | None = None) -> int:
    spec_path, out_path = (argv if argv is not None else sys.argv[1:])[:2]
    spec = json.loads(Path(spec_path).read_text())
    result = asyncio.run(Generator(spec).run())
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
