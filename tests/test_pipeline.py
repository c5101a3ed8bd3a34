"""relay.pipeline against real redis-servers: every URL scheme, the deadline on a
frozen or killed Redis, keepalive, NOSCRIPT, AUTH, and replies kept in order."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import signal
import socket
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.exceptions import ConnectionError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay.pipeline import PipelinedRedis, Script
from tests.services import Process, RedisServer, free_port, require, wait_until

ECHO = Script("return ARGV[1]")
PASSWORD = "testpass"


def run(make: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(make())  # type: ignore[arg-type]


def start_redis(log_dir: Path, name: str, *args: str) -> Process:
    argv = [
        require("redis-server"), "--bind", "127.0.0.1", "--requirepass", PASSWORD, "--save", "",
        "--appendonly", "no", "--dir", str(log_dir), "--enable-debug-command", "local", *args,
    ]  # fmt: skip
    return Process(name, argv, log_dir)


@pytest.fixture(scope="module")
def own_redis(log_dir: Path) -> Iterator[RedisServer]:
    """One of this module's own, to freeze and flush without disturbing the session's relays."""
    server = RedisServer(log_dir)
    yield server
    server.stop()


@pytest.fixture
def unix_socket(log_dir: Path) -> Iterator[str]:
    # A short directory of its own: a socket path is limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="wxrelay-") as directory:
        path = f"{directory}/redis.sock"
        server = start_redis(log_dir, f"redis-unix-{free_port()}", "--port", "0", "--unixsocket", path,
                             "--unixsocketperm", "700")  # fmt: skip
        try:
            server.wait_ready(lambda: redis.Redis(unix_socket_path=path, password=PASSWORD).ping())
            yield path
        finally:
            server.stop()


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        # The certificate names 127.0.0.1 only: "localhost" is a name it does not carry.
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_ca(directory: Path, name: str) -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(f"wxrelay test {name}", key, None, key)
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


@pytest.fixture(scope="module")
def tls_redis(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("tls")
    ca_path, ca, ca_key = _write_ca(directory, "ca")
    other_ca_path, _, _ = _write_ca(directory, "other-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    (directory / "server.pem").write_bytes(_cert("redis", key, ca, ca_key).public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    port = free_port()
    server = start_redis(
        log_dir, f"redis-tls-{port}", "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(directory / "server.pem"), "--tls-key-file", str(directory / "server.key"),
        "--tls-ca-cert-file", str(ca_path), "--tls-auth-clients", "no",
    )  # fmt: skip
    try:
        server.wait_ready(
            lambda: redis.Redis(
                host="127.0.0.1", port=port, password=PASSWORD, ssl=True, ssl_ca_certs=str(ca_path)
            ).ping()
        )
        yield {"port": port, "ca": ca_path, "other_ca": other_ca_path}
    finally:
        server.stop()


def _socket(pipelined: PipelinedRedis) -> socket.socket:
    assert pipelined._protocol is not None and pipelined._protocol.transport is not None
    return pipelined._protocol.transport.get_extra_info("socket")


def _assert_keepalive(sock: socket.socket) -> None:
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    for name, value in {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}.items():
        if hasattr(socket, name):
            assert sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name)) == value, name


async def _round_trip(pipelined: PipelinedRedis, key: str) -> None:
    assert await pipelined.evalsha(ECHO, [key], ["hello"]) == "hello"
    assert await pipelined.call("SET", key, "value") is not None
    assert await pipelined.call("GET", key) == "value"


def test_round_trip_over_tcp_selects_the_db(redis_server: RedisServer) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/3"

    async def main() -> None:
        pipelined = PipelinedRedis(url, timeout=5)
        await _round_trip(pipelined, "test:pipeline:tcp")
        _assert_keepalive(_socket(pipelined))
        pipelined.close()

    run(main)

    def db(n: int) -> redis.Redis:
        return redis.Redis(port=redis_server.port, password=PASSWORD, db=n)

    assert db(3).get("test:pipeline:tcp") == b"value"
    assert db(0).get("test:pipeline:tcp") is None


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_round_trip_over_a_unix_socket(unix_socket: str, form: str) -> None:
    if form == "userinfo":
        url = f"unix://:{PASSWORD}@{unix_socket}?db=2"
    else:
        url = f"unix://{unix_socket}?db=2&password={PASSWORD}"

    async def main() -> None:
        pipelined = PipelinedRedis(url, timeout=5)
        await _round_trip(pipelined, "test:pipeline:unix")
        assert _socket(pipelined).family == socket.AF_UNIX
        pipelined.close()

    run(main)
    assert redis.Redis(unix_socket_path=unix_socket, password=PASSWORD, db=2).get("test:pipeline:unix") == b"value"


def test_round_trip_over_tls(tls_redis: dict[str, Any]) -> None:
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis['port']}/0?ssl_ca_certs={tls_redis['ca']}"

    async def main() -> None:
        pipelined = PipelinedRedis(url, timeout=5)
        await _round_trip(pipelined, "test:pipeline:tls")
        assert pipelined._protocol is not None and pipelined._protocol.transport is not None
        assert pipelined._protocol.transport.get_extra_info("peercert") is not None
        _assert_keepalive(_socket(pipelined))
        pipelined.close()

    run(main)


def test_tls_with_a_ca_that_did_not_sign_the_server_is_refused(tls_redis: dict[str, Any]) -> None:
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis['port']}/0?ssl_ca_certs={tls_redis['other_ca']}"
    with pytest.raises(RedisError, match="CERTIFICATE_VERIFY_FAILED"):
        run(lambda: PipelinedRedis(url, timeout=5).call("PING"))
    # ssl_cert_reqs=none is honoured: the same CA, not checked, lets it through.
    assert run(lambda: PipelinedRedis(f"{url}&ssl_cert_reqs=none", timeout=5).call("PING")) == "PONG"


def test_tls_checks_the_url_host_against_the_certificate(tls_redis: dict[str, Any]) -> None:
    url = f"rediss://:{PASSWORD}@localhost:{tls_redis['port']}/0?ssl_ca_certs={tls_redis['ca']}"
    with pytest.raises(RedisError, match="localhost"):
        run(lambda: PipelinedRedis(url, timeout=5).call("PING"))
    assert run(lambda: PipelinedRedis(f"{url}&ssl_check_hostname=false", timeout=5).call("PING")) == "PONG"


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis+sentinel://:secret@127.0.0.1:26379/mymaster", "redis+sentinel://"),
        ("http://127.0.0.1:6379", "http://"),
        ("127.0.0.1:6379", "without a scheme"),
    ],
)
def test_an_unsupported_scheme_is_refused_at_construction(url: str, named: str) -> None:
    with pytest.raises(ValueError, match="not supported") as raised:
        PipelinedRedis(url)
    message = str(raised.value)
    assert named in message and "rediss://" in message and "unix://" in message
    assert "secret" not in message and "\n" not in message


def test_a_bad_tls_option_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        PipelinedRedis("rediss://127.0.0.1:6380/0?ssl_cert_reqs=maybe")


def test_a_call_to_a_frozen_redis_times_out_and_the_next_reconnects(own_redis: RedisServer) -> None:
    freezer = threading.Thread(target=lambda: own_redis.client().execute_command("DEBUG", "SLEEP", 3))
    probe = own_redis.client(socket_timeout=0.2)

    def frozen() -> bool:
        try:
            probe.ping()
        except redis.exceptions.TimeoutError:
            return True
        return False

    async def main() -> None:
        pipelined = PipelinedRedis(own_redis.url, timeout=0.5)
        # Answered, it leaves the connection's timer armed for its own deadline, before the late calls'.
        before = await pipelined.call("CLIENT", "ID")
        freezer.start()
        await asyncio.to_thread(wait_until, frozen, 5, "Redis frozen by DEBUG SLEEP")
        late = await asyncio.gather(
            pipelined.call("PING"),
            pipelined.evalsha(ECHO, ["k"], ["a"]),
            pipelined.call("GET", "k"),
            return_exceptions=True,
        )
        assert freezer.is_alive(), "the call waited for the freeze to end"
        assert isinstance(late[0], RedisTimeoutError) and "did not answer within 0.5 s" in str(late[0])
        assert all(type(error) is ConnectionError for error in late[1:]), late
        await asyncio.to_thread(freezer.join, 10)
        assert await pipelined.evalsha(ECHO, ["k"], ["b"]) == "b"
        assert await pipelined.call("CLIENT", "ID") != before
        pipelined.close()

    run(main)


def test_a_killed_redis_fails_the_calls_waiting_and_a_restarted_one_is_used(log_dir: Path) -> None:
    port = free_port()
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"

    def start() -> Process:
        server = start_redis(log_dir, f"redis-killed-{port}", "--port", str(port))
        server.wait_ready(lambda: redis.Redis(port=port, password=PASSWORD).ping())
        return server

    server = start()

    async def main() -> None:
        nonlocal server
        pipelined = PipelinedRedis(url, timeout=30)
        assert await pipelined.evalsha(ECHO, ["k"], ["before"]) == "before"
        # A BLPOP that never returns holds the PING behind it, both waiting, when Redis dies.
        waiting = [
            asyncio.ensure_future(pipelined.call("BLPOP", "test:nothing", 0)),
            asyncio.ensure_future(pipelined.call("PING")),
        ]
        monitor = redis.Redis(port=port, password=PASSWORD)
        await asyncio.to_thread(wait_until, lambda: monitor.info("clients")["blocked_clients"] == 1, 5, "BLPOP")
        server.stop(signal.SIGKILL)
        failed = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(type(error) is ConnectionError for error in failed), failed
        with pytest.raises(ConnectionError, match="cannot connect"):
            await pipelined.call("PING")
        server = await asyncio.to_thread(start)
        # The new Redis never saw the script: NOSCRIPT, loaded, answered.
        assert await pipelined.evalsha(ECHO, ["k"], ["after"]) == "after"
        pipelined.close()

    try:
        run(main)
    finally:
        server.stop()


def test_noscript_after_a_script_flush_loads_it_again(own_redis: RedisServer) -> None:
    script = Script("return 'flushed ' .. ARGV[1]")

    async def main() -> None:
        pipelined = PipelinedRedis(own_redis.url, timeout=5)
        assert await pipelined.evalsha(script, [], ["once"]) == "flushed once"
        await pipelined.call("SCRIPT", "FLUSH")
        assert await pipelined.call("SCRIPT", "EXISTS", script.sha) == [0]
        assert await pipelined.evalsha(script, [], ["twice"]) == "flushed twice"
        assert await pipelined.call("SCRIPT", "EXISTS", script.sha) == [1]
        # Any other reply error is the caller's, as it is.
        with pytest.raises(ResponseError, match="ERR"):
            await pipelined.evalsha(Script("return redis.call('NOSUCHCOMMAND')"), [], [])
        pipelined.close()

    run(main)


def test_auth_with_a_wrong_password_is_a_response_error(redis_server: RedisServer) -> None:
    url = f"redis://:wrong@127.0.0.1:{redis_server.port}/0"
    with pytest.raises(ResponseError, match="WRONGPASS|invalid password"):
        run(lambda: PipelinedRedis(url, timeout=5).call("PING"))


def test_auth_with_a_username_runs_every_command_as_that_user(own_redis: RedisServer) -> None:
    own_redis.client().acl_setuser("relay", enabled=True, passwords=["+relaypass"], keys=["*"], commands=["+@all"])
    url = f"redis://relay:relaypass@127.0.0.1:{own_redis.port}/1"

    async def main() -> list[Any]:
        pipelined = PipelinedRedis(url, timeout=5)
        replies = await asyncio.gather(pipelined.call("ACL", "WHOAMI"), pipelined.call("CLIENT", "INFO"))
        pipelined.close()
        return replies

    whoami, info = run(main)
    assert whoami == "relay"
    assert " user=relay " in info and " db=1 " in info


def test_many_coroutines_each_get_their_own_replies(redis_server: RedisServer) -> None:
    redis_server.client().hset("test:pipeline:hash", "f", "v")

    async def main() -> None:
        pipelined = PipelinedRedis(redis_server.url, timeout=10)

        async def one(n: int) -> list[tuple[Any, Any]]:
            seen = []
            for i in range(40):
                tag = f"{n}:{i}"
                if i % 7 == 3:  # reply errors in the stream do not shift the replies after them
                    with pytest.raises(ResponseError, match="WRONGTYPE"):
                        await pipelined.call("GET", "test:pipeline:hash")
                elif i % 2:
                    seen.append((tag, await pipelined.call("ECHO", tag)))
                else:
                    seen.append((tag, await pipelined.evalsha(ECHO, [f"k{n}"], [tag])))
            return seen

        results = await asyncio.gather(*(one(n) for n in range(200)))
        pipelined.close()
        pairs = [pair for result in results for pair in result]
        assert len(pairs) == 200 * 34
        assert all(tag == reply for tag, reply in pairs)

    run(main)


def test_a_subscriber_gets_each_message_and_hears_of_its_connection_lost(log_dir: Path) -> None:
    port = free_port()
    server = start_redis(log_dir, f"redis-subscriber-{port}", "--port", str(port))
    server.wait_ready(lambda: redis.Redis(port=port, password=PASSWORD).ping())
    publisher = redis.Redis(port=port, password=PASSWORD)

    async def main() -> None:
        subscriber = PipelinedRedis(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", timeout=5)
        got: list[tuple[str, str]] = []
        lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        subscriber.on_push = lambda channel, data: got.append((channel, data))
        subscriber.on_lost = lambda exc: lost.done() or lost.set_result(exc)
        assert await subscriber.call("SUBSCRIBE", "test:channel") == ["subscribe", "test:channel", 1]
        for n in range(3):
            await asyncio.to_thread(publisher.publish, "test:channel", f"notice {n}\nwith a newline")
        await asyncio.to_thread(wait_until, lambda: len(got) == 3, 5, "the messages")
        assert got == [("test:channel", f"notice {n}\nwith a newline") for n in range(3)]
        server.stop(signal.SIGKILL)
        await asyncio.wait_for(lost, 5)

    try:
        run(main)
    finally:
        server.stop()
