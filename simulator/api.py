"""The simulator's stand-in for WeChat's API servers (access_token and stable_token, customer-service
send and typing, callback addresses, user info, template messages, temporary media, the menu) and
WeCom's (gettoken, message/send), for any number of accounts and apps.

WeChat's servers are outside the machine, so this is the one fake the test
suite allows; the fault rehearsal (`make chaos`) counts late replies with it
too. It answers like api.weixin.qq.com: HTTP 200 with a JSON errcode, and
keeps every issued token valid until `expire_tokens()` (WeChat keeps the
previous token alive for five minutes after a new fetch). stable_token hands
out one token per AppID until it expires, a new one only when forced, and a
forced refresh ends the one before, as WeChat's does. WeCom's gettoken hands
out one token per app (CorpID and Secret) until it expires, as WeCom's does.
Every token knows its owner (an AppID, or `corpid:agentid`), and so does
every send made with it. Calls to cgi-bin/token and to the endpoints bots use
(user/info, template and typing, media, the menu) are counted (`calls`).
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from wechat.errcodes import NO_PERMISSION

ERRMSG = {
    -1: "system error",
    0: "ok",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40004: "invalid media type",
    40007: "invalid media_id",
    40013: "invalid appid",
    40014: "invalid access_token",
    40056: "invalid agentid",
    40125: "invalid appsecret",
    41001: "access_token missing",
    41005: "media data missing",
    42001: "access_token expired",
    44002: "empty post data",
    45015: "response out of time limit or subscription is canceled",
    45047: "out of response count limit",
    45072: "command field invalid",
    46003: "menu no exist",
    47001: "data format error",
    48001: "api unauthorized",
}
# The errcode a dropped send is recorded with: the connection closed unanswered.
DROPPED = -2
MEDIA_TYPES = ("image", "voice", "video", "thumb")


@dataclass(frozen=True)
class SendAttempt:
    """One POST to custom/send (or WeCom's message/send), accepted or not (errcode DROPPED: left unanswered);
    `body` is the raw bytes, `owner` whose token it carried ('' for none valid)."""

    access_token: str
    body: bytes
    errcode: int
    owner: str = ""


class FakeWeChatAPI:
    """`with FakeWeChatAPI(appid=..., secret=...) as api:` serves on `api.base_url`."""

    def __init__(
        self,
        appid: str = "wx_fake_appid",
        secret: str = "fake_secret",
        expires_in: int = 7200,
        address: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        self.appid = appid
        # Loopback on a free port, or where hosts other than this one reach it (the fleet rehearsal's bridge).
        self.address = address
        self.secret = secret
        self.expires_in = expires_in
        # Guards every field below; waiters are woken whenever one changes.
        self._changed = threading.Condition()
        self._token_requests = 0
        self._valid_tokens: set[str] = set()
        self._expired_tokens: set[str] = set()
        self._failures: deque[int] = deque()
        self._drops = 0
        self._tokens_held = False
        self._tokens_waiting = 0
        self._messages: list[dict[str, Any]] = []
        self._send_attempts: list[SendAttempt] = []
        self._issued: list[str] = []
        # Official accounts: AppID → AppSecret; WeCom apps: (CorpID, Secret) → AgentId.
        self._secrets: dict[str, str] = {appid: secret}
        self._wecom_apps: dict[tuple[str, str], int] = {}
        self._owners: dict[str, str] = {}
        # Per owner: the token stable_token (or gettoken) hands out, and owners whose sends refuse it.
        self._stable: dict[str, str] = {}
        self._stable_revoked: set[str] = set()
        self._forced_refreshes = 0
        # What getcallbackip lists: loopback, where the tests' WeChat calls from.
        self._callback_ips: list[str] = ["127.0.0.1"]
        self._callback_ip_requests = 0
        # The other endpoints: every call by path, and what the accepted ones left behind.
        self._calls: Counter[str] = Counter()
        self._calls_held = False
        self._calls_waiting = 0
        self._typing: list[tuple[str, dict[str, Any]]] = []
        self._templates: list[dict[str, Any]] = []
        self._media: dict[str, tuple[str, bytes]] = {}
        self._menus: dict[str, dict[str, Any]] = {}
        # What an operator meets: every token request refused with an errcode (40164, 40125…), owners
        # without the customer-service API (owner → 48001 or 76022), and a clock this far off the caller's
        # (the Date header).
        self._token_refusal = 0
        self._no_customer_service: dict[str, int] = {}
        self.clock_offset = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FakeWeChatAPI:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self._server = _Server(self, self.address)
        # A short poll interval keeps shutdown, and so each test's teardown, quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-wechat-api", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        # A held request would otherwise keep its client waiting forever.
        self.release_tokens()
        self.release_calls()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeWeChatAPI is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def token_requests(self) -> int:
        """Successful token fetches."""
        with self._changed:
            return self._token_requests

    @property
    def forced_refreshes(self) -> int:
        """stable_token calls with force_refresh: each ends the token before it."""
        with self._changed:
            return self._forced_refreshes

    def add_official(self, appid: str, secret: str) -> None:
        """Another official account whose tokens this API hands out."""
        with self._changed:
            self._secrets[appid] = secret

    def add_wecom_app(self, corpid: str, secret: str, agentid: int) -> None:
        """A WeCom self-built app: gettoken with its CorpID and Secret, message/send with its AgentId."""
        with self._changed:
            self._wecom_apps[(corpid, secret)] = agentid

    def revoke_stable_token(self, appid: str | None = None) -> None:
        """Sends refuse the current stable token (40001), yet stable_token keeps handing it out
        until a forced refresh: the case WeChat's force_refresh is for."""
        owner = appid or self.appid
        with self._changed:
            self._stable_revoked.add(owner)
            if owner in self._stable:
                self._valid_tokens.discard(self._stable[owner])

    @property
    def issued_tokens(self) -> list[str]:
        """Every access_token handed out, expired or not."""
        with self._changed:
            return list(self._issued)

    @property
    def callback_ip_requests(self) -> int:
        """getcallbackip calls answered with the list."""
        with self._changed:
            return self._callback_ip_requests

    def set_callback_ips(self, ip_list: list[str]) -> None:
        """What getcallbackip answers from now on (addresses and networks, as WeChat's do)."""
        with self._changed:
            self._callback_ips = list(ip_list)

    def calls(self, endpoint: str) -> int:
        """Calls to one endpoint (`user/info`, `message/custom/typing`, ...), refused ones included."""
        with self._changed:
            return self._calls[endpoint]

    @property
    def typing_sent(self) -> list[tuple[str, dict[str, Any]]]:
        """Accepted typing commands: (the owner of the token, the JSON body), in arrival order."""
        with self._changed:
            return list(self._typing)

    @property
    def templates(self) -> list[dict[str, Any]]:
        """Accepted template messages, in arrival order."""
        with self._changed:
            return list(self._templates)

    def menu_of(self, appid: str | None = None) -> dict[str, Any] | None:
        """The menu an account has now, as created."""
        with self._changed:
            return self._menus.get(appid or self.appid)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The JSON payloads of accepted sends, in arrival order."""
        with self._changed:
            return list(self._messages)

    @property
    def send_attempts(self) -> list[SendAttempt]:
        """Every send received, answered or dropped, in arrival order."""
        with self._changed:
            return list(self._send_attempts)

    def sends_to(self, user: str) -> list[dict[str, Any]]:
        """The accepted payloads addressed to one OpenID, in arrival order."""
        return [message for message in self.messages if message.get("touser") == user]

    def sends_by(self, owner: str) -> list[dict[str, Any]]:
        """The accepted payloads sent with the tokens of one owner (an AppID, or `corpid:agentid`)."""
        with self._changed:
            attempts = [attempt for attempt in self._send_attempts if attempt.owner == owner and not attempt.errcode]
        return [json.loads(attempt.body) for attempt in attempts]

    @property
    def token_requests_waiting(self) -> int:
        """Token requests blocked right now by `hold_tokens()`."""
        with self._changed:
            return self._tokens_waiting

    def hold_tokens(self) -> None:
        """Make token requests wait until `release_tokens()`: freezes a sender before its send."""
        with self._changed:
            self._tokens_held = True

    def release_tokens(self) -> None:
        """Let held token requests through, and later ones straight away."""
        with self._changed:
            self._tokens_held = False
            self._changed.notify_all()

    def hold_calls(self) -> None:
        """Make calls to the endpoints bots use wait until `release_calls()`, before their token is
        looked at: callers pile up on the token they hold, to be answered at once."""
        with self._changed:
            self._calls_held = True

    def release_calls(self) -> None:
        with self._changed:
            self._calls_held = False
            self._changed.notify_all()

    @property
    def calls_waiting(self) -> int:
        """Calls blocked right now by `hold_calls()`."""
        with self._changed:
            return self._calls_waiting

    def drop_next(self, count: int = 1) -> None:
        """Close the next `count` sends' connections unanswered, before any check (recorded as DROPPED)."""
        with self._changed:
            self._drops += count

    def fail_next(self, errcode: int, count: int = 1) -> None:
        """Answer the next `count` authenticated sends with `errcode` (-1 busy, 45015, 45047, 48001…)."""
        with self._changed:
            self._failures.extend([errcode] * count)

    def reset_failures(self) -> None:
        """Forget the pending `fail_next` and `drop_next` faults."""
        with self._changed:
            self._failures.clear()
            self._drops = 0
            self._changed.notify_all()

    def refuse_tokens(self, errcode: int) -> None:
        """Answer every token request (token, stable_token, gettoken) with `errcode`; 0 ends it."""
        with self._changed:
            self._token_refusal = errcode

    def deny_customer_service(self, owner: str | None = None, errcode: int = 48001) -> None:
        """The account has no customer-service API: its sends and its quota query answer `errcode`, one of
        WeChat's "no permission" (48001, or 76022)."""
        if errcode not in NO_PERMISSION:
            raise ValueError(f"{errcode} is not an errcode WeChat refuses the customer-service API with")
        with self._changed:
            self._no_customer_service[owner or self.appid] = errcode

    def allow_customer_service(self, owner: str | None = None) -> None:
        with self._changed:
            self._no_customer_service.pop(owner or self.appid, None)

    def expire_tokens(self) -> None:
        """Expire every issued token: the next send with one gets 42001."""
        with self._changed:
            self._expired_tokens |= self._valid_tokens
            self._valid_tokens.clear()

    def wait_for(self, predicate: Callable[[FakeWeChatAPI], bool], timeout: float = 5.0) -> None:
        """Block until `predicate(api)` holds; raise TimeoutError after `timeout` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self), timeout):
                raise TimeoutError(f"FakeWeChatAPI: condition not met within {timeout} s")

    def _wait_while_held(self) -> None:
        with self._changed:
            # Only held requests count as waiting, so a test can wait for the count it expects.
            if self._tokens_held:
                self._tokens_waiting += 1
                self._changed.notify_all()
                self._changed.wait_for(lambda: not self._tokens_held)
                self._tokens_waiting -= 1
                self._changed.notify_all()

    def _mint(self, owner: str) -> str:
        """A new valid token of `owner` (the caller holds the lock)."""
        token = f"fake_access_token_{secrets.token_hex(16)}"
        self._valid_tokens.add(token)
        self._issued.append(token)
        self._owners[token] = owner
        return token

    def _stable_of(self, owner: str, force: bool) -> str:
        """The token still valid of `owner`, a new one when forced or when none is (the caller holds the lock)."""
        current = self._stable.get(owner)
        if force:
            self._forced_refreshes += 1
            if current is not None:
                self._valid_tokens.discard(current)
            self._stable_revoked.discard(owner)
        elif current is not None and (current in self._valid_tokens or owner in self._stable_revoked):
            return current
        self._stable[owner] = self._mint(owner)
        return self._stable[owner]

    def issue_token(self, query: dict[str, str], caller: str = "127.0.0.1") -> dict[str, Any]:
        with self._changed:
            self._calls["token"] += 1
        self._wait_while_held()
        if self._token_refusal:
            return self._refused(caller)
        if query.get("grant_type") != "client_credential":
            return _error(40002)
        appid = query.get("appid", "")
        if appid not in self._secrets:
            return _error(40013)
        if query.get("secret") != self._secrets[appid]:
            return _error(40001)
        with self._changed:
            self._token_requests += 1
            token = self._mint(appid)
            self._changed.notify_all()
        return {"access_token": token, "expires_in": self.expires_in}

    def stable_token(self, body: bytes, caller: str = "127.0.0.1") -> dict[str, Any]:
        self._wait_while_held()
        if self._token_refusal:
            return self._refused(caller)
        try:
            request = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return _error(47001)
        if not isinstance(request, dict) or request.get("grant_type") != "client_credential":
            return _error(40002)
        appid = request.get("appid")
        if appid not in self._secrets:
            return _error(40013)
        if request.get("secret") != self._secrets[appid]:
            return _error(40125)
        with self._changed:
            self._token_requests += 1
            token = self._stable_of(appid, force=bool(request.get("force_refresh")))
            self._changed.notify_all()
            return {"access_token": token, "expires_in": self.expires_in}

    def wecom_token(self, query: dict[str, str], caller: str = "127.0.0.1") -> dict[str, Any]:
        """WeCom's gettoken: the app's token still valid, or a new one."""
        self._wait_while_held()
        if self._token_refusal:
            return self._refused(caller)
        corpid = query.get("corpid", "")
        if not any(corp == corpid for corp, _ in self._wecom_apps):
            return _error(40013)
        agentid = self._wecom_apps.get((corpid, query.get("corpsecret", "")))
        if agentid is None:
            return _error(40001)
        with self._changed:
            self._token_requests += 1
            token = self._stable_of(f"{corpid}:{agentid}", force=False)
            self._changed.notify_all()
            return {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": self.expires_in}

    def _refused(self, caller: str) -> dict[str, Any]:
        errcode = self._token_refusal
        if errcode == 40164:
            # As WeChat words it: the caller's address, which the operator must add to the whitelist.
            return {"errcode": errcode, "errmsg": f"invalid ip {caller} ipv6 ::ffff:{caller}, not in whitelist"}
        return _error(errcode)

    def quota(self, query: dict[str, str], body: bytes) -> dict[str, Any]:
        """openapi/quota/get: an API's daily quota, or "no permission" when the account may not call it."""
        with self._changed:
            errcode, owner = self._owner_of("openapi/quota/get", query)
            if errcode:
                return _error(errcode)
            path = (_json_object(body) or {}).get("cgi_path")
            if path == "/cgi-bin/message/custom/send" and owner in self._no_customer_service:
                return _error(self._no_customer_service[owner])
            return {"errcode": 0, "errmsg": "ok", "quota": {"daily_limit": 500000, "used": 0, "remain": 500000}}

    def callback_ips(self, query: dict[str, str]) -> dict[str, Any]:
        with self._changed:
            errcode = self._token_errcode(query.get("access_token", ""))
            if errcode:
                return _error(errcode)
            self._callback_ip_requests += 1
            self._changed.notify_all()
            return {"ip_list": list(self._callback_ips)}

    def _owner_of(self, endpoint: str, query: dict[str, str]) -> tuple[int, str]:
        """Counts the call, waits while calls are held; its token's errcode (0: valid) and owner (the
        caller holds the lock, which waiting lets go)."""
        self._calls[endpoint] += 1
        self._changed.notify_all()
        if self._calls_held:
            self._calls_waiting += 1
            self._changed.notify_all()
            self._changed.wait_for(lambda: not self._calls_held)
            self._calls_waiting -= 1
            self._changed.notify_all()
        token = query.get("access_token", "")
        return self._token_errcode(token), self._owners.get(token, "")

    def user_info(self, query: dict[str, str]) -> dict[str, Any]:
        with self._changed:
            errcode, _ = self._owner_of("user/info", query)
        if errcode:
            return _error(errcode)
        openid = query.get("openid", "")
        if not openid:
            return _error(40003)
        return {"subscribe": 1, "openid": openid, "nickname": f"nick-{openid}", "language": query.get("lang", "")}

    def template_send(self, query: dict[str, str], body: bytes) -> dict[str, Any]:
        with self._changed:
            errcode, _ = self._owner_of("message/template/send", query)
            if errcode:
                return _error(errcode)
            payload = _json_object(body)
            if payload is None or not payload.get("touser") or not payload.get("template_id"):
                return _error(47001)
            self._templates.append(payload)
            return {**_error(0), "msgid": len(self._templates)}

    def typing(self, query: dict[str, str], body: bytes) -> dict[str, Any]:
        with self._changed:
            errcode, owner = self._owner_of("message/custom/typing", query)
            if errcode:
                return _error(errcode)
            payload = _json_object(body)
            if payload is None or not payload.get("touser"):
                return _error(47001)
            if payload.get("command") not in ("Typing", "CancelTyping"):
                return _error(45072)
            self._typing.append((owner, payload))
            return _error(0)

    def media_upload(self, query: dict[str, str], content_type: str, body: bytes) -> dict[str, Any]:
        with self._changed:
            errcode, _ = self._owner_of("media/upload", query)
        if errcode:
            return _error(errcode)
        media_type = query.get("type", "")
        if media_type not in MEDIA_TYPES:
            return _error(40004)
        form = BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        if not form.is_multipart():
            return _error(47001)
        parts = [part for part in form.get_payload() if part.get_param("name", header="content-disposition") == "media"]
        if not parts:
            return _error(41005)
        media_id = f"fake_media_{secrets.token_hex(8)}"
        with self._changed:
            self._media[media_id] = (parts[0].get_content_type(), parts[0].get_payload(decode=True) or b"")
        return {"type": media_type, "media_id": media_id, "created_at": int(time.time())}

    def media_get(self, query: dict[str, str]) -> tuple[dict[str, Any] | None, tuple[str, bytes] | None]:
        """The error, or the file (its type and bytes)."""
        with self._changed:
            errcode, _ = self._owner_of("media/get", query)
            media = self._media.get(query.get("media_id", ""))
        if errcode or media is None:
            return _error(errcode or 40007), None
        return None, media

    def menu(self, action: str, query: dict[str, str], body: bytes = b"") -> dict[str, Any]:
        """menu/create, menu/get and menu/delete of the token's account."""
        with self._changed:
            errcode, owner = self._owner_of(f"menu/{action}", query)
            if errcode:
                return _error(errcode)
            if action == "create":
                payload = _json_object(body)
                if payload is None or not isinstance(payload.get("button"), list):
                    return _error(47001)
                self._menus[owner] = payload
            elif action == "delete":
                self._menus.pop(owner, None)
            elif owner not in self._menus:
                return _error(46003)
            else:
                return {"menu": self._menus[owner]}
            return _error(0)

    def custom_send(self, query: dict[str, str], body: bytes) -> dict[str, Any] | None:
        """The answer to a send; None: drop the connection unanswered."""
        token = query.get("access_token", "")
        with self._changed:
            owner = self._owners.get(token, "") if token in self._valid_tokens else ""
            if self._drops:
                self._drops -= 1
                self._send_attempts.append(SendAttempt(token, body, DROPPED, owner))
                self._changed.notify_all()
                return None
            errcode, payload = self._judge_send(token, body)
            self._send_attempts.append(SendAttempt(token, body, errcode, owner))
            if errcode == 0:
                self._messages.append(payload)
            self._changed.notify_all()
        return _error(errcode)

    def _token_errcode(self, token: str) -> int:
        if not token:
            return 41001
        if token in self._expired_tokens:
            return 42001
        if token not in self._valid_tokens:
            # WeCom says 40014 for a token it does not know.
            return 40014 if ":" in self._owners.get(token, "") else 40001
        return 0

    def _judge_send(self, token: str, body: bytes) -> tuple[int, Any]:
        errcode = self._token_errcode(token)
        if errcode:
            return errcode, None
        if not body:
            return 44002, None
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return 47001, None
        owner = self._owners.get(token, "")
        if ":" in owner:  # a WeCom app's token: the send names the app
            if not isinstance(payload, dict) or str(payload.get("agentid")) != owner.partition(":")[2]:
                return 40056, None
        if owner in self._no_customer_service:
            return self._no_customer_service[owner], None
        if self._failures:
            return self._failures.popleft(), None
        return 0, payload


def _error(errcode: int) -> dict[str, Any]:
    return {"errcode": errcode, "errmsg": ERRMSG.get(errcode, "simulated error")}


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return document if isinstance(document, dict) else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: FakeWeChatAPI, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.api = api


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path, query = self._target()
        if path == "/cgi-bin/token":
            self._answer(self.server.api.issue_token(query, self.client_address[0]))
        elif path == "/cgi-bin/gettoken":
            self._answer(self.server.api.wecom_token(query, self.client_address[0]))
        elif path == "/cgi-bin/getcallbackip":
            self._answer(self.server.api.callback_ips(query))
        elif path == "/cgi-bin/user/info":
            self._answer(self.server.api.user_info(query))
        elif path in ("/cgi-bin/menu/get", "/cgi-bin/menu/delete"):
            self._answer(self.server.api.menu(path.rpartition("/")[2], query))
        elif path == "/cgi-bin/media/get":
            error, media = self.server.api.media_get(query)
            if media is None:
                self._answer(error or {})
            else:
                self._send(media[1], media[0])
        else:
            self._answer({"errcode": 404, "errmsg": "not found"}, status=404)

    def do_POST(self) -> None:
        path, query = self._target()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "/cgi-bin/stable_token":
            self._answer(self.server.api.stable_token(body, self.client_address[0]))
        elif path == "/cgi-bin/openapi/quota/get":
            self._answer(self.server.api.quota(query, body))
        elif path in ("/cgi-bin/message/custom/send", "/cgi-bin/message/send"):
            answer = self.server.api.custom_send(query, body)
            if answer is None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._answer(answer)
        elif path == "/cgi-bin/message/template/send":
            self._answer(self.server.api.template_send(query, body))
        elif path == "/cgi-bin/message/custom/typing":
            self._answer(self.server.api.typing(query, body))
        elif path == "/cgi-bin/media/upload":
            self._answer(self.server.api.media_upload(query, self.headers.get("Content-Type", ""), body))
        elif path == "/cgi-bin/menu/create":
            self._answer(self.server.api.menu("create", query, body))
        else:
            self._answer({"errcode": 404, "errmsg": "not found"}, status=404)

    def _target(self) -> tuple[str, dict[str, str]]:
        url = urlsplit(self.path)
        return url.path, {name: values[-1] for name, values in parse_qs(url.query).items()}

    def _answer(self, document: dict[str, Any], status: int = 200) -> None:
        self._send(json.dumps(document, ensure_ascii=False).encode("utf-8"), "application/json; encoding=utf-8", status)

    def _send(self, data: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def date_time_string(self, timestamp: float | None = None) -> str:
        # The Date header: the doctor reads WeChat's clock from it.
        return super().date_time_string(time.time() + self.server.api.clock_offset)

    def log_message(self, format: str, *args: Any) -> None:
        # Tests read the recorded requests, not a request log.
        pass
