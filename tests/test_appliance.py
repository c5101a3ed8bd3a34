"""The README's quickstart, as a newcomer runs it: in a fresh clone, the
commands between its quickstart markers bring up the whole appliance (nginx,
relays, Redis, workers under one supervisord), talk to it as WeChat in every
mode, and leave nothing behind.

Each test has its own state folder, env file and free ports, and runs the
clone on this test run's virtualenv (VENV=..., VENV_READY=1), so nothing is
installed and no developer's .env or .state is touched.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance import config, envfile
from common.settings import SETTINGS
from tests.services import ROOT, free_port, require, wait_until
from wechat.exceptions import InvalidConfigError

REPLY = "Hi o_simulated_user, you said: hello"
WELCOME = "Welcome! This account is answered by wxrelay."
MODES = ("plain", "compat", "safe")
# A command of the quickstart gets this long; `make run` waits for health itself.
COMMAND_TIMEOUT = 120
# Variables of the developer's shell that would change what the commands do.
_FOREIGN = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TEXT", "MODE", "EVENT", "KEY", "ACCOUNT", "VENV", "VENV_READY")


@dataclass
class Appliance:
    """One local appliance of a test: where it lives, and the commands to run it."""

    clone: Path
    state: Path
    env_file: Path
    env: dict[str, str]
    http_port: int
    relay_ports: list[int]
    redis_port: int

    @property
    def ports(self) -> list[int]:
        return [self.http_port, *self.relay_ports, self.redis_port]

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            shlex.split(command), cwd=self.clone, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def ok(self, command: str) -> str:
        result = self.run(command)
        assert result.returncode == 0, f"`{command}` exited {result.returncode}:\n{result.stdout}{result.stderr}"
        return result.stdout

    def supervisord(self) -> int | None:
        try:
            return int((self.state / "run" / "supervisord.pid").read_text())
        except (OSError, ValueError):
            return None

    def processes(self) -> set[int]:
        """supervisord and everything under it, from /proc."""
        root = self.supervisord()
        return set() if root is None or not alive(root) else {root} | descendants(root)

    def program_pids(self) -> dict[str, int]:
        """What `make status` says of each program: name → pid."""
        found = re.findall(r"^  (\S+)\s+RUNNING\s+pid (\d+),", self.run("make status").stdout, re.M)
        return {name: int(pid) for name, pid in found}


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone of this repository: what is committed, nothing else."""
    for binary in ("redis-server", "nginx", "supervisord"):
        require(binary)
    if not (Path(sys.prefix) / "bin" / "celery").exists():
        pytest.fail(f"run the tests in the project's virtualenv (make test), not {sys.executable}")
    target = tmp_path_factory.mktemp("fresh") / "wxrelay"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True, timeout=60)
    return target


@pytest.fixture
def appliance(clone: Path, tmp_path: Path) -> Iterator[Appliance]:
    http_port, redis_port = free_port(), free_port()
    relays = int(SETTINGS["relays"].default)
    relay_port = consecutive_free_ports(relays, taken={http_port, redis_port})
    # Worker n's /metrics: WXRELAY_WORKER_METRICS_PORT + n, clear of the relays' (and of 8101, the machine's own).
    taken = {http_port, redis_port, *range(relay_port, relay_port + relays)}
    metrics_port = consecutive_free_ports(int(SETTINGS["workers"].default), taken)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WECHAT_", "WXRELAY_")) and k not in _FOREIGN}
    env.update(
        VENV=sys.prefix,
        VENV_READY="1",
        WXRELAY_STATE_DIR=str(tmp_path / "state"),
        WXRELAY_ENV_FILE=str(tmp_path / "wxrelay.env"),
        WXRELAY_HTTP_PORT=str(http_port),
        WXRELAY_RELAY_PORT=str(relay_port),
        WXRELAY_REDIS_PORT=str(redis_port),
        WXRELAY_WORKER_METRICS_PORT=str(metrics_port),
    )
    found = Appliance(
        clone, tmp_path / "state", tmp_path / "wxrelay.env", env, http_port,
        [relay_port + n for n in range(relays)], redis_port,
    )  # fmt: skip
    yield found
    # Whatever the test did, the stack it started stops: the runner ends only
    # what this test's state folder started.
    found.run("make stop")


def quickstart(readme: Path) -> list[str]:
    """The commands of the README's quickstart block, comments dropped."""
    text = readme.read_text()
    assert "<!-- quickstart -->" in text, "README.md has no quickstart block"
    block = text.split("<!-- quickstart -->")[1].split("<!-- /quickstart -->")[0]
    code = re.search(r"```\w*\n(.*?)```", block, re.S)
    assert code is not None, "the quickstart block has no fenced code"
    return [line.split(" #")[0].strip() for line in code.group(1).splitlines() if line.split(" #")[0].strip()]


def test_the_readme_quickstart_runs_the_whole_appliance(appliance: Appliance) -> None:
    commands = quickstart(appliance.clone / "README.md")
    assert commands[0] == "make run" and commands[-1] == "make stop", commands
    for command in commands:
        if command == "make stop":
            # The README shows some modes; the appliance must answer in all three.
            for mode in MODES:
                say = f"make say TEXT=hello MODE={mode}"
                check_say(appliance, say, appliance.ok(say))
            started = appliance.processes()
            assert len(started) >= 8, started  # supervisord, Redis, nginx (+ worker), 2 relays, 2 workers
        output = appliance.ok(command)
        if command == "make run":
            check_run(appliance, output)
        elif command.startswith("make say"):
            check_say(appliance, command, output)
        elif command == "make status":
            check_status(appliance, output)
            # The three messages the quickstart sent, at a glance.
            assert "last minute: 3 messages (passive 3); 0 rejected; 0 bot failures" in output, output
    assert not [pid for pid in started if alive(pid)], "make stop left processes behind"
    assert not listening(appliance.ports), f"make stop left ports bound: {listening(appliance.ports)}"
    assert "wxrelay: not running" in appliance.ok("make stop")


def test_run_again_is_idempotent_and_supervisor_restarts_a_killed_relay(appliance: Appliance) -> None:
    # A supervisord that died and left its pid file: the next run cleans up.
    (appliance.state / "run").mkdir(parents=True)
    (appliance.state / "run" / "supervisord.pid").write_text(f"{dead_pid()}\n")
    assert "removing the pid file" in appliance.ok("make run")

    assert "already running" in appliance.ok("make run")

    relay = f"wxrelay-relay:relay-{appliance.relay_ports[0]}"
    before = appliance.program_pids()
    os.kill(before[relay], signal.SIGKILL)
    wait_until(
        lambda: appliance.run("make status").returncode == 0 and appliance.program_pids()[relay] != before[relay],
        30,
        "supervisor to restart the killed relay",
    )
    check_say(appliance, "make say TEXT=hello", appliance.ok("make say TEXT=hello"))

    # A program stopped by hand: the next run starts it again.
    subprocess.run(
        ["supervisorctl", "-c", str(appliance.state / "supervisord.conf"), "stop", "wxrelay-worker:worker-0"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    output = appliance.ok("make run")
    assert "starting what is stopped: wxrelay-worker:worker-0" in output
    check_status(appliance, appliance.ok("make status"))

    started = appliance.processes()
    appliance.ok("make stop")
    assert not [pid for pid in started if alive(pid)]
    assert not listening(appliance.ports)


def test_an_account_added_by_make_reload_is_answered_and_listed(appliance: Appliance) -> None:
    appliance.ok("make run")
    accounts = appliance.env_file.parent / "accounts.toml"
    accounts.write_text(
        '[accounts.blog]\ntoken = "blogToken1"\nbot = "appserver.example_bot:bot"\n'
        '[accounts.staff]\nkind = "wecom"\ntoken = "staffToken1"\naes_key = "${STAFF_AES_KEY}"\n'
        'corpid = "ww0000000000000001"\nagentid = 1000002\nsecret = "${STAFF_SECRET}"\n'
        'bot = "appserver.example_bot:bot"\n'
    )
    # Its secrets in the owner's env file, as the README says: they reach the relays and workers too.
    with appliance.env_file.open("a") as env_file:
        env_file.write(f"WXRELAY_ACCOUNTS_FILE={accounts}\nSTAFF_AES_KEY={'W' * 43}\nSTAFF_SECRET=staff-secret\n")
    relays = {name: pid for name, pid in appliance.program_pids().items() if name.startswith("wxrelay-relay:")}

    output = appliance.ok("make reload")
    assert "2 relays re-read the accounts: default, blog, staff" in output, output
    assert f"http://127.0.0.1:{appliance.http_port}/wechat/blog" in output and "blogToken1" in output
    # The relays were not restarted: whatever they held open is still theirs to answer.
    assert {name: appliance.program_pids()[name] for name in relays} == relays
    said = appliance.ok("make say ACCOUNT=blog TEXT=hello")
    assert "/wechat/blog (plain mode" in said and f"text: {REPLY}" in said, said
    # A WeCom app is talked to as WeCom does: encrypted for the CorpID, msg_signature alone.
    said = appliance.ok("make say ACCOUNT=staff TEXT=hello")
    assert "/wechat/staff (wecom mode" in said and "reply verified and decrypted" in said, said
    assert f"text: {REPLY}" in said, said
    status = appliance.ok("make status")
    assert re.search(r"^  blog\s+official\s+/wechat/blog\s+plain$", status, re.M), status
    assert "no account 'nope'" in appliance.run("make say ACCOUNT=nope").stderr


def test_run_names_the_port_that_is_taken(appliance: Appliance) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", appliance.relay_ports[-1]))
        squatter.listen()
        result = appliance.run("make run")
    assert result.returncode != 0
    relay = len(appliance.relay_ports)
    assert f"port {appliance.relay_ports[-1]} (relay {relay}) is taken by pid {os.getpid()}" in result.stderr
    assert "WXRELAY_RELAY_PORT" in result.stderr
    assert appliance.supervisord() is None
    # worker1 would run on without its /metrics, and say so in its log alone: `run` says it first.
    metrics = int(appliance.env["WXRELAY_WORKER_METRICS_PORT"]) + 1
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", metrics))
        squatter.listen()
        result = appliance.run("make run")
    assert result.returncode != 0
    assert f"port {metrics} (worker1's metrics) is taken by pid {os.getpid()}" in result.stderr
    assert "WXRELAY_WORKER_METRICS_PORT (0: none)" in result.stderr
    assert appliance.supervisord() is None


def test_a_worker_metrics_port_on_another_port_of_the_appliance_is_refused(tmp_path: Path) -> None:
    owner = tmp_path / ".env"
    envfile.ensure(owner)
    environ = {"WXRELAY_ENV_FILE": str(owner), "WXRELAY_STATE_DIR": str(tmp_path / "state")}
    # worker0 on 8000, worker1 on 8001: the first relay's.
    environ |= {"WXRELAY_RELAY_PORT": "8001", "WXRELAY_WORKER_METRICS_PORT": "8000"}
    with pytest.raises(InvalidConfigError, match=r"^worker1's metrics port .* and relay ports .* both use port 8001$"):
        config.load(environ)
    assert config.load(environ | {"WXRELAY_WORKER_METRICS_PORT": "0"}).settings.worker_metrics_port == 0


def check_run(appliance: Appliance, output: str) -> None:
    env = dict(line.split("=", 1) for line in appliance.env_file.read_text().splitlines() if "=" in line)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", env["WECHAT_TOKEN"])
    assert re.fullmatch(r"[A-Za-z0-9]{43}", env["WECHAT_AES_KEY"])
    assert appliance.env_file.stat().st_mode & 0o077 == 0, "the env file holds secrets: owner only"
    assert f"http://127.0.0.1:{appliance.http_port}/wechat" in output
    assert env["WECHAT_TOKEN"] in output and env["WECHAT_AES_KEY"] in output and env["WECHAT_APPID"] in output
    assert "next: make say TEXT=hello" in output


def check_say(appliance: Appliance, command: str, output: str) -> None:
    mode = re.search(r"MODE=(\w+)", command)
    expected_mode = mode.group(1) if mode else "safe"  # the default when there is an EncodingAESKey
    assert f"({expected_mode} mode" in output, output
    assert "answered in" in output, output
    if expected_mode != "plain":
        assert "reply verified and decrypted" in output, output
    if "EVENT=subscribe" in command:
        assert WELCOME in output, output
    elif "TEXT=hello" in command:
        assert f"text: {REPLY}" in output, output


def check_status(appliance: Appliance, output: str) -> None:
    assert output.rstrip().endswith("all healthy"), output
    assert f"✓ nginx    :{appliance.http_port} /livez → 200" in output
    for port in appliance.relay_ports:
        assert f"✓ relay    :{port} /healthz" in output
    assert f"✓ redis    :{appliance.redis_port} PING → PONG" in output
    assert "✓ workers  2 of 2 seen" in output
    for program in ("nginx", "redis", "wxrelay-worker:worker-0", "wxrelay-worker:worker-1"):
        assert re.search(rf"^  {re.escape(program)}\s+RUNNING", output, re.M), output


def consecutive_free_ports(count: int, taken: set[int]) -> int:
    def first() -> int | None:
        port = free_port()
        wanted = set(range(port, port + count))
        return port if not wanted & taken and port + count < 65536 and all(bindable(p) for p in wanted) else None

    return int(wait_until(first, 10, f"{count} consecutive free ports"))  # type: ignore[arg-type]


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening(ports: list[int]) -> list[int]:
    """Which of these ports some socket listens on (TCP state 0A in /proc/net)."""
    bound = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A":
                bound.add(int(fields[1].rpartition(":")[2], 16))
    return [port for port in ports if port in bound]


def alive(pid: int) -> bool:
    """Exists and is not a zombie (an orphan's zombie may wait long for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def descendants(root: int) -> set[int]:
    children: dict[int, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError):
                continue
            children.setdefault(parent, set()).add(int(entry.name))
    found: set[int] = set()
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), set()) - found:
            found.add(child)
            pending.append(child)
    return {pid for pid in found if alive(pid)}


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid
