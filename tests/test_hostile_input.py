"""Hostile input never costs a valid message, through the whole chain: nginx
(rendered from deploy/nginx), the relays and the workers of one private
appliance (`python -m appliance run`, as tests/test_faults.py).

A refusal must leave nginx no dead keep-alive connection to send the next
(valid) request into; an oversize chunked body is a 413 whoever runs the
appliance; and whatever anyone sends, the answer is a 2xx or 4xx, nothing
invalid reaches a worker, and the valid messages between are each answered.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaos.appliance import APPID, TOKEN
from chaos.rehearsal import Rehearsal
from chaos.stage import stage
from common import ledger
from simulator import WeChatSimulator
from simulator.messages import new_msg_id
from tests.hostile_requests import HOSTILE, MAX_BODY, Account, WeComApp, hostile_requests
from tests.services import require_appliance

WINDOW = 1.5
# The burst: 2,000 wrongly signed requests in 10 s cost up to 10 of 99 valid messages.
BAD_SENDERS = 8
VALID = 99
# Generated hostile requests, each followed by a valid message.
EXAMPLES = 300


# Beside the account `default`: WeCom's requests take paths of their own through the relay.
STAFF = WeComApp("staff", "stafftoken1", "S" * 43, "ww0000000000000001", 1000002)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    require_appliance()
    workdir = tmp_path_factory.mktemp("hostile")
    accounts = workdir / "accounts.toml"
    accounts.write_text(STAFF.table())
    with stage(WINDOW, workdir=workdir, extra={"WXRELAY_ACCOUNTS_FILE": str(accounts)}) as started:
        yield started


def signed(rehearsal: Rehearsal, content: str) -> tuple[dict[str, str], bytes]:
    sim = WeChatSimulator(rehearsal.appliance.url, TOKEN, APPID, rehearsal.appliance.aes_key, deadline=WINDOW)
    return sim.build_request({"MsgType": "text", "Content": content, "MsgId": str(new_msg_id())})


def test_a_burst_of_wrongly_signed_requests_costs_no_valid_message(rehearsal: Rehearsal) -> None:
    url = rehearsal.appliance.url
    stop = threading.Event()
    bad: dict[int, int] = {}
    lock = threading.Lock()

    def refuse_forever() -> None:
        params, body = signed(rehearsal, "forged")
        params["signature"] = "0" * 40
        with httpx.Client(timeout=10, trust_env=False) as client:
            while not stop.is_set():
                status = client.post(url, params=params, content=body).status_code
                with lock:
                    bad[status] = bad.get(status, 0) + 1

    senders = [threading.Thread(target=refuse_forever) for _ in range(BAD_SENDERS)]
    for sender in senders:
        sender.start()
    answers: list[tuple[int, str]] = []
    # nginx logs every connection it found dead, even one a retry on another relay hid from the client.
    nginx_log = rehearsal.appliance.layout.log_dir / "nginx-error.log"
    logged = nginx_log.stat().st_size
    started = time.monotonic()
    try:
        with httpx.Client(timeout=10, trust_env=False) as client:
            for n in range(VALID):
                params, body = signed(rehearsal, f"valid {n}")
                response = client.post(url, params=params, content=body)
                answers.append((response.status_code, response.text))
                time.sleep(0.05)
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    answered = sum(1 for status, _ in answers if status == 200)
    print(f"in {time.monotonic() - started:.1f} s, wrongly signed: {bad}; valid: {answered} of {VALID} answered 200")
    with nginx_log.open("rb") as log:
        log.seek(logged)
        dead = [line for line in log.read().decode(errors="replace").splitlines() if "upstream" in line]
    failed = [(n, status) for n, (status, text) in enumerate(answers) if status != 200 or f"valid {n}" not in text]
    assert not failed, f"valid messages not answered: {failed}"
    assert not dead, f"{len(dead)} connections to a relay found dead, as:\n{dead[0]}"
    assert set(bad) == {403}, bad


def chunked_post(rehearsal: Rehearsal, params: dict[str, str], body: bytes, size: int) -> bytes:
    """POST `body` in chunks of `size` bytes through nginx; the answer's bytes, up to its end."""
    port = rehearsal.appliance.http_port
    head = f"POST /wechat?{urlencode(params)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n"
    parts = (body[at : at + size] for at in range(0, len(body), size))
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        try:
            sock.sendall(chunks + b"0\r\n\r\n")
        except OSError:
            pass  # nginx may answer 413 and stop reading before the body ends
        return sock.makefile("rb").read()


def test_a_chunked_body_in_small_chunks_is_buffered_whoever_runs_nginx(rehearsal: Rehearsal) -> None:
    # Small chunks overflow nginx's in-memory buffer long before the limit: it writes a temp
    # file in the state folder, which its workers must be able to enter (started by root, too).
    params, _ = signed(rehearsal, "unused")
    answer = chunked_post(rehearsal, params, b"<xml>" + b"x" * MAX_BODY + b"</xml>", 16)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    params, body = signed(rehearsal, "in small chunks")
    answer = chunked_post(rehearsal, params, body, 4)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"echo: in small chunks" in answer, answer[:300]


# -- the property: whatever anyone sends ------------------------------------------------------------------------------


def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes to nginx; every byte it answers, up to its close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before it read everything: the answer is judged
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # judged by what came before
        return answer


def final_status(answer: bytes) -> int | None:
    """The status of the final answer, past any 100 Continue; None when there is none."""
    while match := re.match(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n", answer):
        if not match.group(1).startswith(b"1"):
            return int(match.group(1))
        answer = answer[answer.find(b"\r\n\r\n") + 4 :]
    return None


@pytest.mark.parametrize(
    "request_line, header",
    [
        ("POST /wechat HTTP/2.0", b""),
        ("POST /wechat HTTP/9.9", b""),
        ("POST /wechat HTTP/1.1", b"Transfer-Encoding: gzip"),
    ],
    ids=["http2-line", "http9", "gzip-transfer"],
)
def test_what_nginx_does_not_speak_is_a_400(rehearsal: Rehearsal, request_line: str, header: bytes) -> None:
    # nginx's own answers are 505 and 501: server errors, for what is the client's.
    lines = [
        request_line.encode(),
        b"Host: x",
        b"Connection: close",
        b"Content-Length: 0",
        *([header] if header else []),
    ]
    answer = exchange(rehearsal.appliance.http_port, b"\r\n".join(lines) + b"\r\n\r\n")
    assert final_status(answer) == 400, answer[:200]


def hostile_keys(rehearsal: Rehearsal) -> list[str]:
    """Ledger records and handler runs of a hostile message."""
    records = rehearsal.appliance.redis().keys(f"{ledger.RECORD_PREFIX}*msg:{HOSTILE}*")
    return [*records, *(key for key in rehearsal.runs() if key.startswith(f"msg:{HOSTILE}"))]


def test_whatever_anyone_sends_no_5xx_no_worker_and_every_valid_message_answered(rehearsal: Rehearsal) -> None:
    account = Account(TOKEN, APPID, rehearsal.appliance.aes_key)
    port = rehearsal.appliance.http_port
    # The WeCom app is served: its hostile requests are refused by its own checks, not as a 404.
    wecom = WeChatSimulator(
        f"{rehearsal.appliance.url}/{STAFF.name}", STAFF.token, aes_key=STAFF.aes_key, mode="wecom",
        corpid=STAFF.corpid, agentid=STAFF.agentid, deadline=WINDOW,
    )  # fmt: skip
    assert wecom.say("staff here").text == "echo: staff here"
    seen: dict[int, int] = {}
    client = httpx.Client(timeout=10, trust_env=False)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(st.data())
    def anything(data: st.DataObject) -> None:
        hostile = data.draw(hostile_requests(account, STAFF))
        before = set(hostile_keys(rehearsal))
        status = final_status(exchange(port, hostile.data))
        assert status is not None, f"no answer (dropped or reset): {hostile}"
        assert 200 <= status < 500, f"{status}: {hostile}"
        # Dispatched or not, it is decided before the answer.
        assert not set(hostile_keys(rehearsal)) - before, f"reached the ledger: {hostile}"
        seen[status] = seen.get(status, 0) + 1
        # A valid message right after, on a kept-alive connection through nginx's pool.
        n = sum(seen.values())
        params, body = signed(rehearsal, f"between {n}")
        answer = client.post(rehearsal.appliance.url, params=params, content=body)
        assert answer.status_code == 200 and f"echo: between {n}" in answer.text, (answer.status_code, hostile)

    try:
        anything()
    finally:
        client.close()
    print(f"hostile answers by status: {dict(sorted(seen.items()))}")
    assert not hostile_keys(rehearsal)
    assert {400, 403, 404, 405} <= seen.keys(), seen  # refused by nginx and by the relay, for each reason
