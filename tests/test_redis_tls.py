"""The appliance over TLS to Redis, as between hosts: Redis's own tls-port, a private CA, rediss:// URLs.

Redis runs deploy/redis/redis.conf.j2 as the broker of a multi-host deploy renders it, with no plain port
at all, so every client of the appliance that works here works over TLS: the relay's ledger and reply
channel, its redis-py clients, the worker's Celery broker and result backend and its redis-py clients,
the doctor. The CA and Redis's certificate (for 127.0.0.1 and localhost) are the test's own."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import jinja2
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from simulator import WeChatSimulator
from tests.conftest import AES_KEY, APPID, TOKEN, WECHAT_TIMEOUT
from tests.services import ROOT, Process, RedisServer, RelayProcess, Worker, free_port, require

PASSWORD = "tls-app-password-0123"
ADMIN_PASSWORD = "tls-admin-password-0123"


class CA:
    """A private CA, as the redis role makes with openssl on the broker."""

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.certificate = folder / "ca.crt"
        self.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

    def issue_server(self) -> None:
        """Redis's key and certificate, beside the CA's, under the names redis.conf.j2 gives them."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        certificate = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")]))
            .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        (self.folder / "redis.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (self.folder / "redis.key").write_bytes(private)
        (self.folder / "redis.key").chmod(0o600)


def redis_conf(tls_dir: Path, data: Path, tls_port: int) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROOT / "deploy"), undefined=jinja2.StrictUndefined, trim_blocks=True
    )
    return environment.get_template("redis/redis.conf.j2").render(
        # 127.0.0.2 as a name the certificate does not give.
        wxrelay_redis_bind="127.0.0.1 127.0.0.2",
        # No plain port: a client that works here works over TLS.
        wxrelay_redis_port=0,
        wxrelay_redis_tls=True,
        wxrelay_redis_tls_port=tls_port,
        wxrelay_redis_tls_dir=str(tls_dir),
        wxrelay_redis_user="wxrelay",
        wxrelay_redis_password_sha256=hashlib.sha256(PASSWORD.encode()).hexdigest(),
        wxrelay_redis_admin_password_sha256=hashlib.sha256(ADMIN_PASSWORD.encode()).hexdigest(),
        wxrelay_redis_channel_rules="&*",
        wxrelay_redis_dir=str(data),
        wxrelay_redis_logfile="",
        wxrelay_redis_maxmemory="64mb",
    )


def tls_url(user: str, password: str, port: int, ca: Path, host: str = "127.0.0.1") -> str:
    return f"rediss://{user}:{password}@{host}:{port}/0?ssl_ca_certs={ca}"


class TLSRedis(RedisServer):
    """The broker's Redis over TLS only; the tests' own client is the admin user, over TLS too."""

    def __init__(self, folder: Path, ca: CA) -> None:
        self.port = free_port()
        self.password = PASSWORD
        self.url = tls_url("wxrelay", PASSWORD, self.port, ca.certificate)
        self.admin_url = tls_url("admin", ADMIN_PASSWORD, self.port, ca.certificate)
        (folder / "data").mkdir()
        conf = folder / "redis.conf"
        conf.write_text(redis_conf(ca.folder, folder / "data", self.port))
        Process.__init__(self, f"redis-tls-{self.port}", [require("redis-server"), str(conf)], folder)
        self.wait_ready(lambda: self.client().ping())


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    authority = CA(tmp_path_factory.mktemp("redis-tls"), "wxrelay test Redis CA")
    authority.issue_server()
    return authority


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[TLSRedis]:
    server = TLSRedis(tmp_path_factory.mktemp("redis-tls-server"), ca)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_env(stack_env: dict[str, str], tls_redis: TLSRedis, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    spool = tmp_path_factory.mktemp("tls-spool")
    return {**stack_env, "WXRELAY_REDIS_URL": tls_redis.url, "WXRELAY_SPOOL_DIR": str(spool)}


def test_redis_of_this_machine_speaks_tls() -> None:
    """Debian 12's redis-server is built with TLS (OpenSSL): the deploy relies on it."""
    version = subprocess.run([require("redis-server"), "--version"], capture_output=True, text=True).stdout
    assert "v=" in version
    linked = subprocess.run(["ldd", require("redis-server")], capture_output=True, text=True).stdout
    assert "libssl" in linked, f"redis-server is built without TLS: {version}"


def test_a_message_goes_through_a_relay_and_a_worker_over_tls(
    tls_env: dict[str, str], tls_redis: TLSRedis, tmp_path: Path
) -> None:
    worker = Worker(tmp_path, tls_env, "tlsworker1", tls_redis)
    try:
        relay = RelayProcess(tmp_path, tls_env)
        try:
            for mode in ("plain", "safe"):
                wechat = WeChatSimulator(relay.callback, TOKEN, APPID, AES_KEY, mode=mode, deadline=WECHAT_TIMEOUT)
                result = wechat.say(f"over tls {mode}")
                assert result.answered and result.text == f"echo: over tls {mode}"
            # The worker's bot counted it through its own redis-py client: over TLS too.
            assert any(key.startswith(b"test:runs:") for key in tls_redis.client().scan_iter("test:runs:*"))
            # The relay's own redis-py client (/healthz) reaches Redis, and sees the worker, through it.
            health = httpx.get(f"{relay.url}/healthz", timeout=5).json()
            assert health["redis"] and health["workers"] >= 1, health
        finally:
            relay.stop()
    finally:
        worker.stop()
    # Neither logged its password, nor an SSL failure.
    for log in (worker.log(), relay.log()):
        assert PASSWORD not in log and "SSL" not in log


def test_a_plaintext_client_to_the_tls_port_fails(tls_redis: TLSRedis) -> None:
    plain = redis.Redis(port=tls_redis.port, username="wxrelay", password=PASSWORD, socket_timeout=2)
    with pytest.raises(redis.ConnectionError):
        plain.ping()


def test_a_certificate_for_another_name_is_refused(tls_redis: TLSRedis, ca: CA) -> None:
    """The certificate is checked against the host the URL names: 127.0.0.2 is not in it."""
    client = redis.Redis.from_url(tls_url("wxrelay", PASSWORD, tls_redis.port, ca.certificate, "127.0.0.2"))
    with pytest.raises(redis.ConnectionError, match="(?i)certificate|match"):
        client.ping()


def doctor(env_file: Path, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The doctor as `make doctor INVENTORY=` runs it on a workers host (no relays, no supervisord here)."""
    argv = [sys.executable, "-m", "appliance", "doctor", "--env-file", str(env_file), "--no-relays"]
    argv += ["--supervisor-socket", str(env_file.parent / "no-supervisord.sock")]
    return subprocess.run(argv, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)


def env_file(folder: Path, tls_env: dict[str, str], url: str) -> Path:
    path = folder / "wxrelay.env"
    path.write_text(
        "".join(f"{name}={value}\n" for name, value in tls_env.items() if name.startswith(("WECHAT_", "WXRELAY_")))
        + f"WXRELAY_REDIS_URL={url}\n"
    )
    return path


def test_the_doctor_checks_redis_over_tls(tls_env: dict[str, str], tls_redis: TLSRedis, tmp_path: Path) -> None:
    result = doctor(env_file(tmp_path, tls_env, tls_redis.url), tls_env)
    lines = result.stdout.splitlines()
    assert any(line.startswith("  ✓ redis") and f":{tls_redis.port} PING → PONG" in line for line in lines), (
        result.stdout
    )
    assert any(line.startswith("  ✓ memory") for line in lines), result.stdout
    assert "Traceback" not in result.stdout + result.stderr and PASSWORD not in result.stdout + result.stderr


def test_a_wrong_ca_fails_in_one_line(tls_env: dict[str, str], tls_redis: TLSRedis, tmp_path: Path) -> None:
    other = CA(tmp_path / "other", "not the broker's CA")
    url = tls_url("wxrelay", PASSWORD, tls_redis.port, other.certificate)
    result = doctor(env_file(tmp_path, tls_env, url), tls_env)
    output = result.stdout + result.stderr
    failed = [line for line in output.splitlines() if line.startswith("  ✗ redis")]
    assert failed and "certificate verify failed" in failed[0], output
    assert "Traceback" not in output and PASSWORD not in output


@pytest.mark.parametrize(
    "query, complaint",
    [
        (
            "ssl_ca_certs=/nonexistent/redis-ca.crt",
            "WXRELAY_REDIS_URL: ssl_ca_certs=/nonexistent/redis-ca.crt: no such",
        ),
        ("ssl_cert_reqs=always", "WXRELAY_REDIS_URL: ssl_cert_reqs must be none, optional or required, not 'always'"),
    ],
    ids=["missing-ca", "bad-cert-reqs"],
)
def test_a_bad_tls_url_stops_relay_and_worker_at_start_in_one_line(
    tls_env: dict[str, str], tls_redis: TLSRedis, query: str, complaint: str
) -> None:
    environ = {**tls_env, "WXRELAY_REDIS_URL": f"rediss://wxrelay:{PASSWORD}@127.0.0.1:{tls_redis.port}/0?{query}"}
    commands = {
        "relay": [sys.executable, "-m", "relay", "--port", str(free_port())],
        "worker": [sys.executable, "-m", "celery", "-A", "appserver", "worker", "--loglevel", "INFO"],
    }
    for name, argv in commands.items():
        result = subprocess.run(argv, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)
        errors = [line for line in result.stderr.splitlines() if "configuration error" in line]
        assert result.returncode != 0, (name, result.stderr)
        assert len(errors) == 1 and complaint in errors[0], (name, result.stderr)
        assert "Traceback" not in result.stderr and PASSWORD not in result.stdout + result.stderr, name
