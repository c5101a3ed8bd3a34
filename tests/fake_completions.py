"""A stand-in for a language model's OpenAI-compatible chat-completions API.

The model service is outside the machine, so this is the one fake the AI
example's tests use: a ThreadingHTTPServer on a free loopback port that
answers `POST /v1/chat/completions` after a delay chosen by the question (the
last message), fails the questions it is told to, and records every request,
so a test can read the history a bot sent.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    messages: list[dict[str, str]]
    authorization: str

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]

    def contents(self, role: str) -> list[str]:
        return [message["content"] for message in self.messages if message["role"] == role]


def answer_to(question: str) -> str:
    """What the fake answers: short, whatever the question's length, and telling which question it answers."""
    return f"answer to {question[:30]}"


class FakeCompletions:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[CompletionRequest] = []
        self._delays: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-completions", daemon=True)

    def __enter__(self) -> FakeCompletions:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def delay_when(self, question: str, seconds: float) -> None:
        """Answer this question only after `seconds`."""
        with self._lock:
            self._delays[question] = seconds

    def fail_when(self, question: str, status: int = 500) -> None:
        """Answer this question with an HTTP error."""
        with self._lock:
            self._failures[question] = status

    def requests_about(self, question: str) -> list[CompletionRequest]:
        with self._lock:
            return [request for request in self._requests if request.question == question]

    def respond(self, request: CompletionRequest) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self._requests.append(request)
            delay = self._delays.get(request.question, 0.0)
            status = self._failures.get(request.question, 200)
        time.sleep(delay)  # this request's own thread
        if status != 200:
            return status, {"error": {"message": "the fake model failed on purpose", "type": "server_error"}}
        message = {"role": "assistant", "content": answer_to(request.question)}
        return 200, {"object": "chat.completion", "model": request.model, "choices": [{"index": 0, "message": message}]}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeCompletions) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        if self.path != PATH:
            self._answer(404, {"error": {"message": f"no {self.path}"}})
            return
        request = CompletionRequest(body["model"], body["messages"], self.headers.get("Authorization", ""))
        self._answer(*self.server.fake.respond(request))

    def _answer(self, status: int, document: dict[str, Any]) -> None:
        data = json.dumps(document, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the bot stopped waiting: its deadline passed first

    def log_message(self, format: str, *args: Any) -> None:
        # Tests read the recorded requests, not a request log.
        pass
