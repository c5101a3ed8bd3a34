"""The simulated WeChat server builds, signs, delivers and verifies like WeChat.

The small HTTP server here stands in for "some callback URL"; tests of the
simulator against the relay itself live with the relay's end-to-end tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from wechatpy.enterprise.crypto import WeChatCrypto

from simulator import WECOM, ReplyVerificationError, WeChatSimulator, event_message, text_message, to_xml
from simulator.__main__ import main
from wechat.crypto import MessageCrypto
from wechat.exceptions import InvalidConfigError
from wechat.parser import parse_xml
from wechat.signature import check_msg_signature, check_signature

TOKEN = "simtoken"
APPID = "wx2c2769f8efd9abc2"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
CRYPTO = MessageCrypto(TOKEN, AES_KEY, APPID)
CORPID = "ww5823bf96d3bd56c7"
AGENTID = 1000002
WECOM_CRYPTO = MessageCrypto(TOKEN, AES_KEY, CORPID)
# An independent implementation, so that the simulator's WeCom requests are not checked only against our crypto.
WECHATPY = WeChatCrypto(TOKEN, AES_KEY, CORPID)


@dataclass(frozen=True)
class Request:
    query: dict[str, str]
    body: bytes
    method: str = "POST"


# Given the request, return (status, body); None never answers.
Responder = Callable[[Request], "tuple[int, bytes] | None"]


@dataclass
class CallbackServer:
    """A callback URL whose answers each test chooses."""

    respond: Responder
    requests: list[Request] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""


@pytest.fixture
def callback() -> Iterator[CallbackServer]:
    server_state = CallbackServer(respond=lambda request: (200, b"success"))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            url = urlsplit(self.path)
            request = Request(dict(parse_qsl(url.query)), self.rfile.read(int(self.headers["Content-Length"])))
            server_state.requests.append(request)
            answer = server_state.respond(request)
            if answer is None:
                server_state.release.wait()
                return
            status, body = answer
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            request = Request(dict(parse_qsl(urlsplit(self.path).query)), b"", "GET")
            server_state.requests.append(request)
            status, body = server_state.respond(request) or (500, b"")
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    server_state.url = f"http://127.0.0.1:{server.server_address[1]}/wechat"
    yield server_state
    server_state.release.set()
    server.shutdown()
    server.server_close()


def simulator(url: str = "http://127.0.0.1:9/wechat", mode: str = "plain", **options: float) -> WeChatSimulator:
    return WeChatSimulator(url, TOKEN, appid=APPID, aes_key=AES_KEY, mode=mode, **options)  # type: ignore[arg-type]


def inbound(request: Request) -> dict:
    """The message in a request, decrypted when encrypted."""
    document = parse_xml(request.body)
    if request.query.get("encrypt_type") != "aes":
        return document
    query = request.query
    xml, _ = CRYPTO.decrypt_message(document["Encrypt"], query["msg_signature"], query["timestamp"], query["nonce"])
    return parse_xml(xml)


def echo_reply(request: Request) -> str:
    message = inbound(request)
    return to_xml(
        {
            "ToUserName": message["FromUserName"],
            "FromUserName": message["ToUserName"],
            "CreateTime": 1700000000,
            "MsgType": "text",
            "Content": f"you said: {message['Content']}",
        }
    )


def encrypted_echo(request: Request) -> tuple[int, bytes]:
    return 200, CRYPTO.encrypt_reply(echo_reply(request), request.query["nonce"]).encode()


def test_plain_request_is_signed_and_carries_the_message() -> None:
    message = text_message("hello", user="o_alice")

    query, body = simulator().build_request(message)

    check_signature(TOKEN, query["signature"], query["timestamp"], query["nonce"])
    assert query["openid"] == "o_alice"
    assert "encrypt_type" not in query and "msg_signature" not in query
    assert parse_xml(body) == {name: str(value) for name, value in message.items()}


def test_safe_request_carries_only_to_user_name_and_encrypt() -> None:
    message = text_message("你好 ]]> <b>", user="o_alice")

    query, body = simulator(mode="safe").build_request(message)

    document = parse_xml(body)
    assert set(document) == {"ToUserName", "Encrypt"}
    assert query["encrypt_type"] == "aes" and query["openid"] == "o_alice"
    check_msg_signature(TOKEN, query["msg_signature"], query["timestamp"], query["nonce"], document["Encrypt"])
    check_signature(TOKEN, query["signature"], query["timestamp"], query["nonce"])
    xml, _ = CRYPTO.decrypt_message(document["Encrypt"], query["msg_signature"], query["timestamp"], query["nonce"])
    assert xml == to_xml(message)
    assert parse_xml(xml)["Content"] == "你好 ]]> <b>"


def test_compat_request_carries_the_plaintext_fields_and_encrypt() -> None:
    message = event_message("CLICK", "menu_help")

    query, body = simulator(mode="compat").build_request(message)

    document = parse_xml(body)
    encrypted = document.pop("Encrypt")
    assert document == {name: str(value) for name, value in message.items()}
    xml, _ = CRYPTO.decrypt_message(encrypted, query["msg_signature"], query["timestamp"], query["nonce"])
    assert xml == to_xml(message)


def test_msg_ids_are_unique_positive_and_wechat_sized() -> None:
    ids = [int(parse_xml(simulator().build_request(text_message("hi"))[1])["MsgId"]) for _ in range(200)]

    assert len(set(ids)) == len(ids)
    assert all(0 < msg_id < 2**63 and len(str(msg_id)) == 19 for msg_id in ids)


@pytest.mark.parametrize(
    ("name", "key", "expected"),
    [
        ("subscribe", None, {"Event": "subscribe"}),
        ("subscribe", "42", {"Event": "subscribe", "EventKey": "qrscene_42", "Ticket": "gQ_simulated_ticket"}),
        ("unsubscribe", None, {"Event": "unsubscribe"}),
        ("click", "menu_help", {"Event": "CLICK", "EventKey": "menu_help"}),
        ("SCAN", "42", {"Event": "SCAN", "EventKey": "42", "Ticket": "gQ_simulated_ticket"}),
        ("LOCATION", None, {"Event": "LOCATION", "Latitude": "23.137466", "Longitude": "113.352425"}),
        ("VIEW", "https://example.com/", {"Event": "VIEW", "EventKey": "https://example.com/"}),
    ],
)
def test_events_carry_their_fields(name: str, key: str | None, expected: dict[str, str]) -> None:
    fields = parse_xml(to_xml(event_message(name, key, user="o_alice")))

    assert fields["MsgType"] == "event" and fields["FromUserName"] == "o_alice"
    assert fields["ToUserName"] == "gh_wxrelay_local"
    assert "MsgId" not in fields
    assert expected.items() <= fields.items()


def test_encrypted_modes_need_an_aes_key_and_appid() -> None:
    with pytest.raises(InvalidConfigError):
        WeChatSimulator("http://127.0.0.1:9/wechat", TOKEN, mode="safe")
    with pytest.raises(InvalidConfigError):
        WeChatSimulator("http://127.0.0.1:9/wechat", TOKEN, aes_key=AES_KEY, mode="compat")
    with pytest.raises(InvalidConfigError):
        WeChatSimulator("http://127.0.0.1:9/wechat", TOKEN, mode="secret")


def test_plain_reply_is_parsed(callback: CallbackServer) -> None:
    callback.respond = lambda request: (200, echo_reply(request).encode())

    result = simulator(callback.url).say("hello", user="o_alice")

    assert result.answered and result.delivery == 1 and not result.decrypted
    assert result.reply_message_type == "text"
    assert result.text == "you said: hello"
    assert result.reply is not None and result.reply["ToUserName"] == "o_alice"


@pytest.mark.parametrize("mode", ["safe", "compat"])
def test_encrypted_reply_is_verified_and_decrypted(callback: CallbackServer, mode: str) -> None:
    callback.respond = encrypted_echo

    result = simulator(callback.url, mode=mode).say("hello")

    assert result.answered and result.decrypted
    assert result.text == "you said: hello"
    assert b"<Encrypt>" in result.body


@pytest.mark.parametrize("answer", [b"success", b""])
def test_no_passive_reply_needs_no_encryption(callback: CallbackServer, answer: bytes) -> None:
    callback.respond = lambda request: (200, answer)

    result = simulator(callback.url, mode="safe").event("subscribe")

    assert result.answered and result.reply is None and result.text is None
    assert result.body == answer


def test_tampered_msg_signature_is_rejected(callback: CallbackServer) -> None:
    def tampered(request: Request) -> tuple[int, bytes]:
        envelope = encrypted_echo(request)[1].decode()
        signature = parse_xml(envelope)["MsgSignature"]
        return 200, envelope.replace(signature, "0" * 40).encode()

    callback.respond = tampered

    with pytest.raises(ReplyVerificationError, match="MsgSignature"):
        simulator(callback.url, mode="safe").say("hello")


def test_plaintext_reply_to_an_encrypted_request_is_rejected(callback: CallbackServer) -> None:
    callback.respond = lambda request: (200, echo_reply(request).encode())

    with pytest.raises(ReplyVerificationError, match="plaintext reply"):
        simulator(callback.url, mode="safe").say("hello")


def test_a_silent_callback_times_out_on_every_delivery(callback: CallbackServer) -> None:
    callback.respond = lambda request: None

    result = simulator(callback.url, deadline=0.3).say("hello")

    assert not result.answered and result.delivery is None and result.reply is None
    assert [attempt.outcome for attempt in result.attempts] == ["timeout"] * 3
    assert all(attempt.seconds >= 0.3 for attempt in result.attempts)
    assert result.elapsed >= 0.9
    assert len(callback.requests) == 3


def test_an_error_status_is_retried_with_the_identical_request(callback: CallbackServer) -> None:
    statuses = iter([500, 403, 200])
    callback.respond = lambda request: (next(statuses), b"success")

    result = simulator(callback.url, mode="safe").say("hello")

    assert result.answered and result.delivery == 3
    assert [attempt.outcome for attempt in result.attempts] == [500, 403, 200]
    first = callback.requests[0]
    assert all(request == first for request in callback.requests)


def test_one_simulator_serves_concurrent_threads(callback: CallbackServer) -> None:
    callback.respond = encrypted_echo
    shared = simulator(callback.url, mode="safe")
    texts = [f"message {n}" for n in range(20)]

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(shared.say, texts))

    assert [result.text for result in results] == [f"you said: {text}" for text in texts]


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Settings from variables only: no .env from the working tree."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WXRELAY_ENV_FILE", raising=False)
    for name, value in {"WECHAT_TOKEN": TOKEN, "WECHAT_APPID": APPID, "WECHAT_AES_KEY": AES_KEY}.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_cli_prints_the_verified_reply(
    callback: CallbackServer, environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    callback.respond = encrypted_echo

    status = main(["--url", callback.url, "--text", "hello"])

    out = capsys.readouterr().out
    assert status == 0
    assert f'→ text "hello" to {callback.url} (safe mode, as o_simulated_user)' in out
    assert "← delivery 1 of 3 answered in" in out and "(reply verified and decrypted)" in out
    assert "  text: you said: hello" in out


def test_cli_reports_every_failed_delivery(
    callback: CallbackServer, environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    callback.respond = lambda request: (500, b"")

    status = main(["--url", callback.url, "--mode", "plain", "--event", "CLICK", "--key", "menu"])

    out = capsys.readouterr().out
    assert status == 1
    assert out.count(": HTTP 500 after") == 3
    assert "no delivery answered" in out


def test_cli_refuses_a_bad_configuration_in_one_line(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environment.setenv("WECHAT_AES_KEY", "")

    status = main(["--mode", "safe"])

    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: ")


def wecom(url: str = "http://127.0.0.1:9/wechat") -> WeChatSimulator:
    return WeChatSimulator(url, TOKEN, aes_key=AES_KEY, mode=WECOM, corpid=CORPID, agentid=AGENTID)


def wecom_inbound(request: Request) -> dict:
    """The message in a WeCom request, decrypted by wechatpy."""
    query = request.query
    return parse_xml(WECHATPY.decrypt_message(request.body, query["msg_signature"], query["timestamp"], query["nonce"]))


def wecom_echo(request: Request) -> tuple[int, bytes]:
    message = wecom_inbound(request)
    reply = to_xml(
        {
            "ToUserName": message["FromUserName"],
            "FromUserName": message["ToUserName"],
            "CreateTime": 1700000000,
            "MsgType": "text",
            "Content": f"you said: {message['Content']}",
        }
    )
    return 200, WECHATPY.encrypt_message(reply, request.query["nonce"]).encode()


def test_wecom_request_is_signed_by_msg_signature_alone_and_names_the_app(callback: CallbackServer) -> None:
    wecom(callback.url).say("你好", user="zhangsan")

    (request,) = callback.requests
    assert set(request.query) == {"msg_signature", "timestamp", "nonce"}
    envelope = parse_xml(request.body)
    assert list(envelope) == ["ToUserName", "AgentID", "Encrypt"]
    assert envelope["ToUserName"] == CORPID and envelope["AgentID"] == str(AGENTID)
    message = wecom_inbound(request)
    assert list(message) == ["ToUserName", "FromUserName", "CreateTime", "MsgType", "Content", "MsgId", "AgentID"]
    assert message["ToUserName"] == CORPID and message["FromUserName"] == "zhangsan"
    assert message["Content"] == "你好" and message["AgentID"] == str(AGENTID)
    query = request.query
    xml, _ = WECOM_CRYPTO.decrypt_message(
        envelope["Encrypt"], query["msg_signature"], query["timestamp"], query["nonce"]
    )
    assert parse_xml(xml) == message


def test_wecom_build_request_keeps_a_given_message_as_it_is() -> None:
    message = event_message("click", "menu_help", user="zhangsan", account=CORPID, AgentID=AGENTID)

    query, body = wecom().build_request(message, timestamp="1714112445", nonce="415670741")

    assert query["timestamp"] == "1714112445" and query["nonce"] == "415670741"
    assert WECHATPY.decrypt_message(body, query["msg_signature"], "1714112445", "415670741") == to_xml(message)


def test_wecom_reply_envelope_is_verified_and_decrypted(callback: CallbackServer) -> None:
    callback.respond = wecom_echo

    result = wecom(callback.url).say("hello", user="zhangsan")

    assert result.answered and result.decrypted and result.text == "you said: hello"
    assert result.reply is not None and result.reply["ToUserName"] == "zhangsan"


def test_wecom_reply_for_another_corp_or_in_plaintext_is_rejected(callback: CallbackServer) -> None:
    other = WeChatCrypto(TOKEN, AES_KEY, "wwWRONG")
    callback.respond = lambda request: (200, other.encrypt_message("<xml></xml>", request.query["nonce"]).encode())
    with pytest.raises(ReplyVerificationError, match="does not decrypt"):
        wecom(callback.url).say("hello")

    callback.respond = lambda request: (200, b"<xml><MsgType>text</MsgType></xml>")
    with pytest.raises(ReplyVerificationError, match="plaintext reply"):
        wecom(callback.url).say("hello")


def test_wecom_verification_sends_an_encrypted_echostr() -> None:
    params, expected = wecom().build_verification("1616140317555161061")

    assert set(params) == {"msg_signature", "timestamp", "nonce", "echostr"} and expected == "1616140317555161061"
    assert params["echostr"] != expected
    signed = (params["msg_signature"], params["timestamp"], params["nonce"])
    assert WECHATPY.check_signature(*signed, params["echostr"]) == expected
    assert WECOM_CRYPTO.decrypt_echostr(params["echostr"], *signed) == expected


def test_an_official_accounts_verification_sends_the_echostr_in_the_clear() -> None:
    params, expected = simulator(mode="safe").build_verification()

    assert params["echostr"] == expected and expected.isdigit()
    check_signature(TOKEN, params["signature"], params["timestamp"], params["nonce"])


def test_verify_url_passes_only_the_exact_plaintext(callback: CallbackServer) -> None:
    def decrypted(request: Request) -> bytes:
        query = request.query
        echo = WECOM_CRYPTO.decrypt_echostr(
            query["echostr"], query["msg_signature"], query["timestamp"], query["nonce"]
        )
        return echo.encode()

    callback.respond = lambda request: (200, decrypted(request))
    verification = wecom(callback.url).verify_url()
    assert verification.ok and verification.body.decode() == verification.expected
    assert callback.requests[0].method == "GET"

    for wrong in (lambda request: (200, decrypted(request) + b"\n"), lambda request: (403, decrypted(request))):
        callback.respond = wrong
        assert not wecom(callback.url).verify_url().ok
    callback.respond = lambda request: (200, request.query["echostr"].encode())
    assert not wecom(callback.url).verify_url().ok


def test_wecom_mode_needs_a_corpid_an_agentid_and_an_aes_key() -> None:
    with pytest.raises(InvalidConfigError):
        WeChatSimulator("http://127.0.0.1:9/wechat", TOKEN, aes_key=AES_KEY, mode=WECOM, corpid=CORPID)
    with pytest.raises(InvalidConfigError):
        WeChatSimulator("http://127.0.0.1:9/wechat", TOKEN, aes_key=AES_KEY, mode=WECOM, agentid=AGENTID)
    with pytest.raises(InvalidConfigError):
        WeChatSimulator("http://127.0.0.1:9/wechat", TOKEN, mode=WECOM, corpid=CORPID, agentid=AGENTID)
