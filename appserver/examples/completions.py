"""An OpenAI-compatible chat-completions API, called from async handlers.

`POST {base}/chat/completions` with `{"model", "messages"}`; the answer is
`choices[0].message.content`. One `httpx.AsyncClient` per worker process,
made on first use on the handler loop: a client belongs to the loop it first
ran on, and a prefork child must not share its parent's connections.
"""

from __future__ import annotations

import asyncio

import httpx

from appserver.examples.history import Message


class CompletionError(Exception):
    """No answer: the service could not be reached, refused, took too long or answered something else.
    Its text never holds the API key (it travels in a header no error repeats)."""


class ChatCompletions:
    def __init__(self, base_url: str, api_key: str | None, model: str, deadline: float) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model
        self._deadline = deadline
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def answer(self, messages: list[Message]) -> str:
        """The model's answer to `messages`, within `deadline` seconds in all."""
        if not self._base_url:
            raise CompletionError("WXRELAY_AI_BASE_URL is not set")
        body = {"model": self._model, "messages": messages}
        try:
            async with asyncio.timeout(self._deadline):
                response = await self._client_here().post("/chat/completions", json=body)
        except TimeoutError:
            raise CompletionError(f"no answer within {self._deadline:g} s") from None
        except httpx.HTTPError as exc:
            raise CompletionError(f"{type(exc).__name__}: {exc}") from None
        if response.status_code != httpx.codes.OK:
            # Not the body: a service may quote part of a wrong key back.
            raise CompletionError(f"HTTP {response.status_code} from {self._base_url}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError):
            raise CompletionError("an answer without choices[0].message.content") from None
        if not isinstance(content, str) or not content.strip():
            raise CompletionError("an empty answer")
        return content.strip()

    def _client_here(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # httpx's default 5 s would cut a slow model short: the deadline in `answer` is the one that counts.
            self._client = httpx.AsyncClient(
                base_url=self._base_url, headers=self._headers, timeout=httpx.Timeout(self._deadline)
            )
            self._loop = loop
        return self._client
