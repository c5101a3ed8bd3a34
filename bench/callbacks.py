"""Signed WeChat callbacks, pre-generated for wrk.

wrk's LuaJIT has neither SHA-1 nor AES, so every request is built here, right
before the run that sends it (fresh timestamps, well inside the relay's 300 s
window), each with its own MsgId (otherwise the relay's dedupe would serve a
cached reply). The file holds complete HTTP/1.1 requests, each preceded by
its length on a line of its own; bench/wrk/replay.lua walks through them once.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from pathlib import Path

from wechat.crypto import decode_aes_key, encrypt
from wechat.signature import make_signature

TOKEN = "wxrelaybench"
APPID = "wx0bench0000000001"
AES_KEY = "benchbenchbenchbenchbenchbenchbenchbench123"
ACCOUNT = "gh_wxrelay_bench"
USERS = 1000

_msg_ids = itertools.count(secrets.randbits(40) << 20)


def new_msg_id() -> int:
    """Unique within this process and across runs: a random base, then a counter."""
    return next(_msg_ids)


def message_xml(msg_id: int, user: str, content: str, created: int) -> str:
    return (
        f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName>"
        f"<CreateTime>{created}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>"
    )


def build(
    msg_id: int,
    mode: str,
    host: str,
    path: str = "/wechat",
    user: str | None = None,
    content: str | None = None,
    bot: str = "echo",
) -> bytes:
    """One complete POST request, as WeChat's server sends it."""
    timestamp = str(int(time.time()))
    nonce = str(secrets.randbelow(9 * 10**9) + 10**9)
    user = user or f"o_bench_user_{msg_id % USERS:04d}"
    xml = message_xml(msg_id, user, content or f"{bot} {msg_id}", int(timestamp))
    query = f"signature={make_signature(TOKEN, timestamp, nonce)}&timestamp={timestamp}&nonce={nonce}&openid={user}"
    if mode == "safe":
        encrypted = encrypt(_KEY, xml, APPID)
        msg_signature = make_signature(TOKEN, timestamp, nonce, encrypted)
        query += f"&encrypt_type=aes&msg_signature={msg_signature}"
        xml = f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    elif mode != "plain":
        raise ValueError(f"mode must be plain or safe, not {mode!r}")
    body = xml.encode()
    head = (
        f"POST {path}?{query} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/xml\r\n"
        f"User-Agent: Mozilla/4.0\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_KEY = decode_aes_key(AES_KEY)


def write_requests(path: Path, count: int, mode: str, host: str, bot: str = "echo") -> Path:
    """Write `count` fresh requests for `bot` ("echo", "io" or "slow" of bench/bots/suite.py) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks: list[bytes] = []
    for _ in range(count):
        request = build(new_msg_id(), mode, host, bot=bot)
        chunks.append(b"%d\n" % len(request))
        chunks.append(request)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(chunks))
    os.replace(tmp, path)
    return path
