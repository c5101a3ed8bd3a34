"""WeChat's API for bots, on the appliance's one access_token per account.

A bot that fetched a token of its own (cgi-bin/token) would end the
appliance's, or have its own ended by it: the 40001 fight. These clients take
the token from its shared owner (appserver/access_token.py: one copy in
Redis, fetched by one process at a time) and, when WeChat refuses it,
discard it there with compare-and-delete before trying once more, so a burst
of refusals costs one fetch, not one per caller.

`msg.api` is the client of the message's account, `bot.api` the one of the
account a bot serves (`bot.api_for(name)` any of the appliance's); each is
sync, and `.aio` is the same client for async handlers: it reads the cached
token with an async Redis client and leaves a fetch (a lock, then WeChat) to
threads of its own, so nothing it does blocks the handlers' event loop.

The typed helpers are an official account's endpoints; `call` reaches any
other (and a WeCom app's, on its own token).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, cached_property
from typing import Any

import httpx
import redis
import redis.asyncio as aioredis

from appserver.access_token import TOKEN_INVALID, AccessTokens, TokenError, owner_of
from appserver.app import serving, settings
from appserver.connection import SOCKET_TIMEOUT, client
from common.accounts import Account
from wechat.replies import Article, Image, News, Reply, Text

log = logging.getLogger("wxrelay.wechat_api")

TIMEOUT = 10.0
# A fetch waits on the owner's lock (up to 10 s) and on WeChat: on threads of its own, never on a
# handler's thread or the event loop. Waiting callers queue here; once the token is cached each one
# takes it from Redis at once.
FETCH_THREADS = 8
_fetches = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="wxrelay-token")

Params = dict[str, Any]
Files = dict[str, tuple[str, bytes]]


class WeChatAPIError(Exception):
    """WeChat answered an errcode (or no JSON at all: errcode -1, the HTTP status in errmsg)."""

    def __init__(self, errcode: int, errmsg: str, endpoint: str) -> None:
        super().__init__(f"{endpoint}: errcode {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg
        self.endpoint = endpoint


class Endpoints:
    """WeChat's common endpoints, written once for both clients: each returns what `call`
    returns, the answer's JSON (a download: the file's bytes), awaitable on the async client."""

    def call(
        self, method: str, endpoint: str, *, params: Params | None = None, json: Any = None,
        files: Files | None = None, raw: bool = False,
    ) -> Any:  # fmt: skip
        """Any endpoint, e.g. `call("POST", "cgi-bin/tags/create", json={"tag": {"name": "vip"}})`;
        the access_token is added. `raw`: the answer is a file unless WeChat answers JSON."""
        raise NotImplementedError

    def user_info(self, openid: str, lang: str = "zh_CN") -> Any:
        return self.call("GET", "cgi-bin/user/info", params={"openid": openid, "lang": lang})

    def send_template(
        self, touser: str, template_id: str, data: dict[str, Any], url: str | None = None,
        miniprogram: dict[str, str] | None = None,
    ) -> Any:  # fmt: skip
        """`data` as WeChat wants it: {"name": {"value": "..."}}; the answer carries the `msgid`."""
        body: dict[str, Any] = {"touser": touser, "template_id": template_id, "data": data}
        if url:
            body["url"] = url
        if miniprogram:
            body["miniprogram"] = miniprogram
        return self.call("POST", "cgi-bin/message/template/send", json=body)

    def upload_media(self, media_type: str, content: bytes, filename: str) -> Any:
        """A temporary file (image, voice, video, thumb) for three days; the answer carries its `media_id`."""
        files = {"media": (filename, content)}
        return self.call("POST", "cgi-bin/media/upload", params={"type": media_type}, files=files)

    def download_media(self, media_id: str) -> Any:
        """The file's bytes (a video's answer is JSON: its `video_url`)."""
        return self.call("GET", "cgi-bin/media/get", params={"media_id": media_id}, raw=True)

    def create_menu(self, menu: dict[str, Any]) -> Any:
        """`menu` as WeChat wants it: {"button": [...]}."""
        return self.call("POST", "cgi-bin/menu/create", json=menu)

    def get_menu(self) -> Any:
        return self.call("GET", "cgi-bin/menu/get")

    def delete_menu(self) -> Any:
        return self.call("GET", "cgi-bin/menu/delete")

    def send(self, openid: str, reply: Reply) -> Any:
        """A customer-service message: any reply of `appserver.replies` that the API can carry."""
        payload = reply.to_customer_service(openid)
        if payload is None:
            raise ValueError(f"the customer-service API cannot send a {type(reply).__name__}")
        return self.call("POST", "cgi-bin/message/custom/send", json=payload)

    def send_text(self, openid: str, content: str) -> Any:
        return self.send(openid, Text(content))

    def send_image(self, openid: str, media_id: str) -> Any:
        return self.send(openid, Image(media_id))

    def send_news(self, openid: str, articles: list[Article]) -> Any:
        return self.send(openid, News(articles))

    def typing(self, openid: str) -> Any:
        """Shows the user "typing…" for 15 s, or until a message reaches them."""
        return self.call("POST", "cgi-bin/message/custom/typing", json={"touser": openid, "command": "Typing"})


class WeChatAPI(Endpoints):
    """The sync client of one account: every call blocks its thread (a sync handler's own)."""

    def __init__(self, name: str, account: Account | None, redis_client: Callable[[], redis.Redis]) -> None:
        self.name = name
        self.account = account
        self._redis = redis_client
        self.aio = AsyncWeChatAPI(self)

    @cached_property
    def http(self) -> httpx.Client:
        # Never from the environment: a proxy's log would hold every access_token.
        return httpx.Client(timeout=TIMEOUT, trust_env=False)

    @cached_property
    def tokens(self) -> AccessTokens:
        """The account's token owner; TokenError when the account has none (no secret)."""
        if self.account is None:
            raise TokenError(f"no account {self.name!r} is configured")
        owner = owner_of(self.account, self._redis(), self.http)
        if owner is None:
            raise TokenError(f"account {self.name!r} has no secret: WeChat's API needs it")
        return owner

    def url(self, endpoint: str) -> str:
        assert self.account is not None  # `tokens` came first
        return f"{self.account.api_base.rstrip('/')}/{endpoint}"

    def call(
        self, method: str, endpoint: str, *, params: Params | None = None, json: Any = None,
        files: Files | None = None, raw: bool = False,
    ) -> Any:  # fmt: skip
        def send(token: str) -> tuple[int, Any]:
            return _outcome(self.http.request(method, self.url(endpoint), **_request(token, params, json, files)), raw)

        token = self.token()
        errcode, answer = send(token)
        if errcode in TOKEN_INVALID:
            self.tokens.discard(token)
            errcode, answer = send(self.token())
        return _result(errcode, answer, endpoint)

    def token(self) -> str:
        """The account's access_token, fetched through its shared owner if need be; TokenError when it cannot be."""
        try:
            return self.tokens.get()
        except httpx.HTTPError as exc:
            raise TokenError(f"token fetch failed: {type(exc).__name__}") from None


class AsyncWeChatAPI(Endpoints):
    """The same client for async handlers: `await msg.api.aio.user_info(msg.source)`."""

    def __init__(self, api: WeChatAPI) -> None:
        self._api = api
        # httpx's and redis-py's async clients belong to the loop they were made on.
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[httpx.AsyncClient, aioredis.Redis]]
        self._per_loop = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def _clients(self) -> tuple[httpx.AsyncClient, aioredis.Redis]:
        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._per_loop.get(loop)
            if found is None:
                assert self._api.account is not None
                found = self._per_loop[loop] = (
                    httpx.AsyncClient(timeout=TIMEOUT, trust_env=False),
                    aioredis.Redis.from_url(
                        self._api.account.redis_url, socket_connect_timeout=2, socket_timeout=SOCKET_TIMEOUT
                    ),
                )
            return found

    async def call(
        self, method: str, endpoint: str, *, params: Params | None = None, json: Any = None,
        files: Files | None = None, raw: bool = False,
    ) -> Any:  # fmt: skip
        api = self._api
        key = api.tokens.key
        http, cache = self._clients()

        async def send(token: str) -> tuple[int, Any]:
            return _outcome(await http.request(method, api.url(endpoint), **_request(token, params, json, files)), raw)

        cached = await cache.get(key)
        token = cached.decode() if cached else await _in_thread(api.token)
        errcode, answer = await send(token)
        if errcode in TOKEN_INVALID:
            errcode, answer = await send(await _in_thread(lambda: _renew(api, token)))
        return _result(errcode, answer, endpoint)


async def _in_thread(fetch: Callable[[], str]) -> str:
    return await asyncio.get_running_loop().run_in_executor(_fetches, fetch)


def _renew(api: WeChatAPI, refused: str) -> str:
    api.tokens.discard(refused)
    return api.token()


def _request(token: str, params: Params | None, document: Any, files: Files | None) -> dict[str, Any]:
    """httpx's arguments for one call."""
    request: dict[str, Any] = {"params": {**(params or {}), "access_token": token}, "files": files}
    if document is not None:
        # WeChat wants UTF-8 JSON, not \\u escapes.
        request["content"] = json.dumps(document, ensure_ascii=False).encode()
        request["headers"] = {"Content-Type": "application/json"}
    return request


def _outcome(response: httpx.Response, raw: bool) -> tuple[int, Any]:
    """WeChat's errcode (0: none) and its answer: the JSON, or the file's bytes."""
    kind = response.headers.get("content-type", "")
    if raw and response.status_code == 200 and "json" not in kind and not kind.startswith("text/plain"):
        return 0, response.content
    try:
        answer = response.json()
    except ValueError:
        return -1, f"HTTP {response.status_code}, not JSON"
    if not isinstance(answer, dict):
        return -1, f"HTTP {response.status_code}, not a JSON object"
    return int(answer.get("errcode") or 0), answer


def _result(errcode: int, answer: Any, endpoint: str) -> Any:
    if errcode:
        errmsg = answer.get("errmsg", "") if isinstance(answer, dict) else str(answer)
        raise WeChatAPIError(errcode, errmsg, endpoint)
    return answer


@cache
def _redis_of(url: str) -> redis.Redis:
    if url == settings.redis_url:
        return client()
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=SOCKET_TIMEOUT)


@cache
def api_for(name: str) -> WeChatAPI:
    """The client of one of the appliance's accounts; one per account and process, built on first use.
    An account without a secret (or not configured) gets a client whose calls raise TokenError."""
    account = serving.accounts.get(name)
    return WeChatAPI(name, account, lambda: _redis_of(account.redis_url if account else settings.redis_url))
