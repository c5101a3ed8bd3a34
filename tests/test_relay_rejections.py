"""Bad input gets a clear answer, is counted, and never reaches a worker."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from simulator import WeChatSimulator
from tests.conftest import AES_KEY, APPID, TOKEN

XXE = b"""<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>gh</ToUserName><FromUserName>u</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&xxe;</Content><MsgId>1</MsgId></xml>"""
LAUGHS = b"""<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>
<xml><Content>&d;</Content></xml>"""


def post(relay, params, body, **kwargs):
    return httpx.post(relay.callback, params=params, content=body, timeout=5, **kwargs)


def signed(mode="plain", **fields):
    sim = WeChatSimulator("http://unused", TOKEN, APPID, AES_KEY, mode=mode)
    message = {"MsgType": "text", "Content": "hi", **fields}
    return sim.build_request(message)


def assert_rejected(response, status, relay, reason, before):
    assert response.status_code == status
    assert "Traceback" not in response.text and len(response.text) < 100
    assert relay.metric("wxrelay_rejected_total", reason=reason) == before + 1


@pytest.fixture
def relay(relays):
    return relays[0]


def test_wrong_signature_is_403_and_not_dispatched(relay, redis_server):
    params, body = signed(MsgId="555000111")
    before = relay.metric("wxrelay_rejected_total", reason="signature")
    response = post(relay, {**params, "signature": "0" * 40}, body)
    assert_rejected(response, 403, relay, "signature", before)
    assert not redis_server.client().exists("wxrelay:msg:msg:555000111")


def test_missing_signature_is_403(relay):
    params, body = signed()
    before = relay.metric("wxrelay_rejected_total", reason="signature")
    response = post(relay, {k: v for k, v in params.items() if k != "signature"}, body)
    assert_rejected(response, 403, relay, "signature", before)


def test_stale_timestamp_is_403(relay):
    sim = WeChatSimulator("http://unused", TOKEN, APPID, AES_KEY)
    params, body = sim.build_request({"MsgType": "text", "Content": "old"}, timestamp=str(int(time.time()) - 3600))
    before = relay.metric("wxrelay_rejected_total", reason="timestamp")
    assert_rejected(post(relay, params, body), 403, relay, "timestamp", before)


def test_oversize_body_is_413(relay):
    params, _ = signed()
    body = b"<xml>" + b"x" * 70_000 + b"</xml>"
    before = relay.metric("wxrelay_rejected_total", reason="body_too_large")
    assert_rejected(post(relay, params, body), 413, relay, "body_too_large", before)


def test_oversize_chunked_body_is_413(relay):
    params, _ = signed()

    def chunks():
        for _ in range(20):
            yield b"x" * 8192

    before = relay.metric("wxrelay_rejected_total", reason="body_too_large")
    assert_rejected(post(relay, params, chunks()), 413, relay, "body_too_large", before)


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"<xml><ToUserName>unclosed", "malformed_xml"),
        (b"", "malformed_xml"),
        (b"<notxml><a>1</a></notxml>", "malformed_xml"),
        (b"<xml><Content>\xff\xfe</Content></xml>", "malformed_xml"),
        (signed(MsgId="555000666")[1].decode().encode("utf-16-le"), "malformed_xml"),
        (XXE, "hostile_xml"),
        (LAUGHS, "hostile_xml"),
    ],
    ids=["truncated", "empty", "wrong-root", "invalid-utf8", "utf16-without-bom", "xxe", "billion-laughs"],
)
def test_bad_xml_is_400(relay, redis_server, body, reason):
    params, _ = signed()
    before = relay.metric("wxrelay_rejected_total", reason=reason)
    assert_rejected(post(relay, params, body), 400, relay, reason, before)
    assert not redis_server.client().exists("wxrelay:msg:msg:555000666")


def test_wrong_msg_signature_is_403(relay):
    params, body = signed("safe")
    before = relay.metric("wxrelay_rejected_total", reason="signature")
    assert_rejected(post(relay, {**params, "msg_signature": "f" * 40}, body), 403, relay, "signature", before)


def test_undecryptable_body_is_400(relay):
    from wechat.signature import make_signature

    params, _ = signed("safe")
    encrypt = "bm90IGEgcmVhbCBjaXBoZXJ0ZXh0IGF0IGFsbCEhIQ=="
    body = f"<xml><ToUserName>gh</ToUserName><Encrypt>{encrypt}</Encrypt></xml>".encode()
    params["msg_signature"] = make_signature(TOKEN, params["timestamp"], params["nonce"], encrypt)
    before = relay.metric("wxrelay_rejected_total", reason="decrypt")
    assert_rejected(post(relay, params, body), 400, relay, "decrypt", before)


def test_url_verification_official_vector(start_relay):
    relay = start_relay(WECHAT_TOKEN="AAAAA", WXRELAY_TIMESTAMP_WINDOW=str(10**9))
    query = {"timestamp": "1714036504", "nonce": "1514711492", "echostr": "4375120948345356249"}
    good = httpx.get(relay.callback, params={**query, "signature": "f464b24fc39322e44b38aa78f5edd27bd1441696"})
    assert good.status_code == 200 and good.text == "4375120948345356249"
    bad = httpx.get(relay.callback, params={**query, "signature": "f464b24fc39322e44b38aa78f5edd27bd1441697"})
    assert bad.status_code == 403 and "4375120948345356249" not in bad.text


def test_url_verification_needs_a_fresh_timestamp(relay):
    sim = WeChatSimulator("http://unused", TOKEN)
    params, _ = sim.build_request({"MsgType": "text", "Content": "x"}, timestamp=str(int(time.time()) - 3600))
    response = httpx.get(relay.callback, params={**params, "echostr": "12345"})
    assert response.status_code == 403 and "12345" not in response.text


def test_bad_configuration_stops_the_relay_at_start(stack_env):
    import subprocess
    import sys

    env = {**stack_env, "WECHAT_AES_KEY": "too-short"}
    done = subprocess.run([sys.executable, "-m", "relay", "--port", "1"], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "WECHAT_AES_KEY" in done.stderr


def test_another_method_is_405_and_not_dispatched(relay, redis_server):
    params, body = signed(MsgId="555000333")
    before = relay.metric("wxrelay_rejected_total", reason="method")
    response = httpx.put(relay.callback, params=params, content=body, timeout=5)
    assert_rejected(response, 405, relay, "method", before)
    assert not redis_server.client().exists("wxrelay:msg:msg:555000333")


def test_a_query_that_is_not_utf8_is_400_and_not_dispatched(relay, redis_server):
    params, body = signed(MsgId="555000444")
    query = "&".join(f"{name}={value}" for name, value in params.items()) + "&nonce=%ff%fe"
    before = relay.metric("wxrelay_rejected_total", reason="malformed_query")
    response = httpx.post(f"{relay.callback}?{query}", content=body, timeout=5)
    assert_rejected(response, 400, relay, "malformed_query", before)
    assert not redis_server.client().exists("wxrelay:msg:msg:555000444")


@pytest.mark.parametrize(
    "timestamp",
    ["²", "١٧١٤٠٣٦٥٠٤", "9" * 5000, "+1714036504"],
    ids=["superscript", "arabic-indic", "5000-digits", "plus-sign"],
)
def test_a_signed_timestamp_that_is_not_ascii_digits_is_403(relay, redis_server, timestamp):
    # Signed with the token: only the timestamp's own check stands between it and a worker.
    sim = WeChatSimulator("http://unused", TOKEN, APPID, AES_KEY)
    params, body = sim.build_request({"MsgType": "text", "Content": "x", "MsgId": "555000555"}, timestamp=timestamp)
    before = relay.metric("wxrelay_rejected_total", reason="timestamp")
    assert_rejected(post(relay, params, body), 403, relay, "timestamp", before)
    assert not redis_server.client().exists("wxrelay:msg:msg:555000555")


@pytest.mark.parametrize(
    "length", ["²", "1" + "0" * 5000, "-1", "0x10"], ids=["superscript", "5000-digits", "minus", "hex"]
)
def test_a_content_length_that_is_not_a_number_is_400(relay, length):
    params, body = signed()
    query = "&".join(f"{name}={value}" for name, value in params.items())
    request = f"POST /wechat?{query} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode("latin-1")
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
        sock.sendall(request + body)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 "), answer


@pytest.mark.parametrize("path", ["/wechat", "/wechat/nobody"])
def test_a_head_request_is_answered_without_a_body(relay, path):
    # Answered 405 (or 404) with a body, a HEAD made Tornado drop the connection: nginx said 502.
    response = httpx.head(f"{relay.url}{path}", params=signed()[0], timeout=5)
    assert response.status_code in (404, 405) and response.content == b""
