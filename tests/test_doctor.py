"""`make doctor` against a real appliance: clean, then one fault at a time, each named with its fix.

The appliance runs under its supervisord on free ports (chaos/appliance.py), its WeChat API is the fake
one (which answers the errcodes an operator meets), and its public name is a TLS nginx of the test's in
front of the appliance's nginx, with a certificate from the test's own CA."""

from __future__ import annotations

import datetime
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chaos.appliance import APPID, TOKEN, Appliance, Secrets
from common import problems
from simulator import WeChatSimulator
from simulator.api import FakeWeChatAPI
from tests.services import Process, free_port, require, require_appliance, wait_until

# WeChat's window, short: a handler slower than its three deliveries goes late in seconds.
WINDOW = 1.0


class Doctor:
    def __init__(self, appliance: Appliance, api: FakeWeChatAPI, tls: TLSFront) -> None:
        self.appliance, self.api, self.tls = appliance, api, tls

    def wechat(self) -> WeChatSimulator:
        appliance = self.appliance
        return WeChatSimulator(appliance.url, TOKEN, APPID, appliance.aes_key, mode="safe", deadline=WINDOW)

    def run(self) -> tuple[int, str]:
        result = self.appliance.doctor({"SSL_CERT_FILE": str(self.tls.ca)})
        return result.returncode, result.stdout + result.stderr

    def failing(self) -> list[str]:
        """The lines of the checks that failed, when the doctor says something is wrong."""
        code, output = self.run()
        assert code == 1, output
        return [line for line in output.splitlines() if line.startswith("  ✗")]


class TLSFront:
    """nginx with TLS on the public name (localhost), forwarding to the appliance's nginx."""

    def __init__(self, folder: Path, upstream: int) -> None:
        self.folder = folder
        self.port = free_port()
        self.ca = folder / "ca.pem"
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wxrelay test CA")])
        self._ca_name = name
        now = datetime.datetime.now(datetime.UTC)
        ca = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )  # fmt: skip
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.issue(days=90)
        conf = folder / "nginx.conf"
        conf.write_text(
            f"daemon off; pid {folder}/nginx.pid; error_log {folder}/error.log; worker_processes 1;\n"
            "events { worker_connections 64; }\n"
            f"http {{ access_log off; client_body_temp_path {folder}/body; proxy_temp_path {folder}/proxy;\n"
            f"  fastcgi_temp_path {folder}/f; uwsgi_temp_path {folder}/u; scgi_temp_path {folder}/s;\n"
            f"  server {{ listen 127.0.0.1:{self.port} ssl; server_name localhost;\n"
            f"    ssl_certificate {folder}/site.pem; ssl_certificate_key {folder}/site.key;\n"
            f"    location / {{ proxy_pass http://127.0.0.1:{upstream}; }} }} }}\n"
        )
        self.conf = conf
        self.start()

    def start(self) -> None:
        (self.folder / "nginx.pid").unlink(missing_ok=True)
        argv = [require("nginx"), "-e", str(self.folder / "error.log"), "-c", str(self.conf)]
        self.nginx = Process("nginx-tls", argv, self.folder)
        self.nginx.wait_ready(lambda: (self.folder / "nginx.pid").exists())

    def stop(self) -> None:
        self.nginx.stop()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}/wechat"

    def issue(self, days: int) -> None:
        """A certificate for localhost from the CA, valid `days` more days."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        site = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(self._ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )  # fmt: skip
        (self.folder / "site.pem").write_bytes(site.public_bytes(serialization.Encoding.PEM))
        (self.folder / "site.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def reload(self) -> None:
        """nginx takes the certificate anew (SIGHUP; a new worker serves the next connection)."""
        master = int((self.folder / "nginx.pid").read_text())
        workers = set(_children(master))
        self.nginx.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: (now := set(_children(master))) and not now & workers, 10, "nginx to reload")


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.fixture(scope="module")
def doctor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Doctor]:
    require_appliance()
    workdir = tmp_path_factory.mktemp("doctor")
    keys = Secrets.fresh()
    with FakeWeChatAPI(appid=APPID, secret=keys.appsecret) as api:
        tls_folder = workdir / "tls"
        tls_folder.mkdir()
        appliance = Appliance(workdir / "appliance", api.base_url, window=WINDOW, keys=keys)
        tls = TLSFront(tls_folder, appliance.http_port)
        appliance.extra = {"WXRELAY_BOT": "tests/bots/doctor_bot.py:bot", "WXRELAY_PUBLIC_URL": tls.url}
        try:
            appliance.start()
            yield Doctor(appliance, api, tls)
        finally:
            appliance.stop()
            tls.stop()


def test_a_healthy_appliance_gets_a_clean_bill(doctor: Doctor) -> None:
    code, output = doctor.run()
    assert code == 0, output
    assert "✗" not in output and output.rstrip().endswith("all good")
    for seen in (
        "services",
        "workers",
        "verify default",
        "clock",
        "public default",
        "certificate",
        "token default",
        "memory",
        "bot",
    ):
        assert f"✓ {seen}" in output, (seen, output)
    assert f"{doctor.tls.url} answers WeChat's URL verification" in output


@pytest.mark.parametrize(
    ("errcode", "said"),
    [
        (40164, "add this server's IP 127.0.0.1 to the API IP whitelist"),
        (40125, "the AppSecret is wrong (40125)"),
    ],
)
def test_a_token_wechat_refuses_is_named_with_its_fix(doctor: Doctor, errcode: int, said: str) -> None:
    doctor.api.refuse_tokens(errcode)
    try:
        [line] = doctor.failing()
    finally:
        doctor.api.refuse_tokens(0)
    assert "token default" in line and said in line


def test_an_account_without_the_customer_service_api_is_told_its_choices(doctor: Doctor) -> None:
    doctor.api.deny_customer_service(APPID)
    try:
        [line] = doctor.failing()
    finally:
        doctor.api.allow_customer_service(APPID)
    assert "late replies default" in line and "(48001)" in line and "late_path = pickup" in line


def test_a_clock_off_wechats_is_named(doctor: Doctor) -> None:
    doctor.api.clock_offset = -400
    try:
        [line] = doctor.failing()
    finally:
        doctor.api.clock_offset = 0
    # The Date header counts whole seconds.
    drift = re.search(r"this clock is (\d+) s ahead of WeChat's", line)
    assert drift and abs(int(drift.group(1)) - 400) <= 2 and "timedatectl set-ntp true" in line, line


def test_a_stopped_worker_is_named(doctor: Doctor) -> None:
    [worker, _] = doctor.appliance.workers()
    doctor.appliance.stop_program(worker)
    try:
        wait_until(lambda: "1 of 2 seen" in doctor.run()[1], 30, "the relays to miss the stopped worker")
        failing = doctor.failing()
    finally:
        doctor.appliance.start_program(worker)
    assert any(f"{worker} (STOPPED) not running" in line for line in failing), failing
    assert any("workers" in line and "1 of 2 seen by the relays" in line for line in failing), failing
    wait_until(lambda: doctor.run()[0] == 0, 30, "the doctor to find the worker back")


def test_an_expiring_certificate_is_named(doctor: Doctor) -> None:
    doctor.tls.issue(days=5)
    doctor.tls.reload()
    try:
        [line] = doctor.failing()
    finally:
        doctor.tls.issue(days=90)
        doctor.tls.reload()
    assert "localhost's certificate expires in 4 days" in line and "renew it" in line


def test_redis_near_its_limit_is_named(doctor: Doctor) -> None:
    before = doctor.appliance.maxmemory()
    used = int(doctor.appliance.redis().info("memory")["used_memory"])
    doctor.appliance.set_maxmemory(int(used / 0.9))
    try:
        [line] = doctor.failing()
    finally:
        doctor.appliance.set_maxmemory(before)
    assert "✗ memory" in line and "raise wxrelay_redis_maxmemory" in line


def test_a_failing_bot_is_named_with_its_handler_and_error_and_no_secret(doctor: Doctor) -> None:
    # The bot raises on every text but `slow N`, with the AppSecret in its error.
    wechat = doctor.wechat()
    try:
        for _ in range(3):
            assert wechat.say("hello").text is None
        wait_until(lambda: doctor.appliance.redis().llen(problems.KEY) == 3, 10, "the failures to be kept")
        code, output = doctor.run()
    finally:
        doctor.appliance.redis().delete(problems.KEY)
    assert code == 1, output
    assert "✗ bot" in output and "3 failures in the last hour" in output
    assert "3 × default: handler careless failed: RuntimeError: cannot sign in with appsecret ***" in output, output
    assert doctor.appliance.secrets.appsecret not in output


def test_late_replies_wechat_refuses_are_named_by_errcode(doctor: Doctor) -> None:
    doctor.api.fail_next(45015)
    try:
        # Slower than WeChat's three deliveries: the reply goes late, and WeChat refuses it.
        assert doctor.wechat().say("slow 4").text is None
        wait_until(lambda: doctor.appliance.redis().llen(problems.KEY) == 1, 30, "the refusal to be kept")
        code, output = doctor.run()
    finally:
        doctor.appliance.redis().delete(problems.KEY)
    assert code == 1 and "✗ bot" in output, output
    assert "1 × default: late replies not sent: the user's 48-hour window closed (45015)" in output, output


def test_a_public_url_nobody_answers_is_named(doctor: Doctor) -> None:
    doctor.tls.stop()
    try:
        failing = doctor.failing()
    finally:
        doctor.tls.start()
    assert any("public default" in line and "is not reachable: open ports 80/443" in line for line in failing), failing
    assert any("certificate" in line and f"no TLS on localhost:{doctor.tls.port}" in line for line in failing), failing
    assert len(failing) == 2, failing
