"""The Ansible deployment (deploy/ansible): static checks, and the rehearsal.

Static: yamllint and ansible-lint (production profile) clean, the playbook's
syntax, `nginx -t` on the rendered site, the wiring of a spread-out
inventory, the vault convention and the wheelhouse's marker logic
(the Vagrantfile: tests/test_vagrant.py). Then the rehearsal (deploy/rehearse): a fresh Debian 12
container, two converges (the second with changed=0), end-to-end checks,
the whole host restarted mid-traffic (every message answered exactly once).

What this machine lacks (root, systemd-nspawn, Ansible …) skips a
test with the reason, except under CI (the CI variable set, as .ci/run
runs), where everything is installed and a missing tool is a failure.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE_DIR = ROOT / "deploy" / "ansible"
TESTS_DEPLOY = ROOT / "tests" / "deploy"
VENV_BIN = Path(sys.prefix) / "bin"
MANDATORY = bool(os.environ.get("CI"))
# The bound for a whole rehearsal from a fresh tree, and 90 s for its host restart.
REHEARSAL_TIMEOUT = 8 * 60 + 90


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, where .ci/run installs everything."""
    if MANDATORY:
        pytest.fail(f"{reason} (CI is set: .ci/run must provide it)")
    pytest.skip(reason)


def tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        unavailable(f"{name} is not in {VENV_BIN}: make deploy-tools (deploy/requirements.lock)")
    return str(path)


def run(argv: list[str], cwd: Path = ROOT, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    environ = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "NO_COLOR": "1",
        **env,
    }
    return subprocess.run(argv, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)


def output(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-8000:]}\n{result.stderr[-8000:]}"


# --- lint and syntax -------------------------------------------------------------


def test_yamllint_is_clean() -> None:
    paths = ["deploy/ansible", "deploy/monitoring", "tests/deploy", ".yamllint", ".ansible-lint"]
    result = run([tool("yamllint"), "--strict", *paths])
    assert result.returncode == 0, output(result)


def test_ansible_lint_production_profile_is_clean() -> None:
    result = run([tool("ansible-lint"), "--profile", "production", "--offline"], cwd=ANSIBLE_DIR)
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize(
    "inventory, vault",
    [(ANSIBLE_DIR / "inventory/example", None), (TESTS_DEPLOY / "inventory", TESTS_DEPLOY / "vault-password")],
    ids=["example-inventory", "test-inventory"],
)
def test_playbook_syntax(inventory: Path, vault: Path | None) -> None:
    argv = [tool("ansible-playbook"), "--syntax-check", "-i", str(inventory), "site.yml"]
    if vault is not None:
        argv += ["--vault-password-file", str(vault)]
    result = run(argv, cwd=ANSIBLE_DIR)
    assert result.returncode == 0, output(result)


# --- rendered configuration ------------------------------------------------------------


def render(inventory: Path, dest: Path, *extra: str) -> Path:
    argv = [
        tool("ansible-playbook"),
        "-i",
        str(inventory),
        str(TESTS_DEPLOY / "render.yml"),
        "--vault-password-file",
        str(TESTS_DEPLOY / "vault-password"),
        "-e",
        f"render_dir={dest}",
        *extra,
    ]
    result = run(argv, cwd=ANSIBLE_DIR)
    assert result.returncode == 0, output(result)
    return dest


def test_rendered_nginx_site_passes_nginx_t(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        unavailable("nginx is not installed (apt-get install nginx)")
    tls = TESTS_DEPLOY / "tls"
    # The certificate where this machine has it, in place of the target's path.
    key = tmp_path / "wxrelay.test.key"
    shutil.copyfile(tls / "wxrelay.test.key", key)
    key.chmod(0o600)
    site = (
        render(
            TESTS_DEPLOY / "inventory",
            tmp_path / "render",
            "-e",
            f"wxrelay_tls_certificate={tls / 'wxrelay.test.crt'}",
            "-e",
            f"wxrelay_tls_certificate_key={key}",
        )
        / "rehearsal"
        / "nginx-site.conf"
    )
    text = site.read_text()
    # Every relay port of the test inventory (3 relays from 8001, the last standing by), keepalive,
    # retries on errors only (a held POST too, never on a timeout), TLS, a small body limit.
    assert "server 127.0.0.1:8001 max_fails=0;" in text and "server 127.0.0.1:8002 max_fails=0;" in text
    assert "server 127.0.0.1:8003 max_fails=0 backup;" in text
    assert "keepalive" in text and "proxy_next_upstream error non_idempotent;" in text
    assert "listen 443 ssl" in text and "client_max_body_size 65536;" in text
    wrapper = tmp_path / "nginx.conf"
    wrapper.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path}/body;\n  include {site};\n}}\n"
    )
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(wrapper)], capture_output=True, text=True)
    assert result.returncode == 0, output(result)


def test_multihost_inventory_wiring(tmp_path: Path) -> None:
    """Workers on other hosts reach Redis over the private network, as its wxrelay user."""
    rendered = render(TESTS_DEPLOY / "multihost", tmp_path)
    front, worker = rendered / "front1", rendered / "work1"
    password = "multihost-redis-password-0123"
    digest = hashlib.sha256(password.encode()).hexdigest()
    # Redis on the front host listens on loopback and its private address,
    # lets in no unnamed client, and keeps the password as a hash only ...
    redis = (front / "redis.conf").read_text()
    assert "bind 127.0.0.1 198.51.100.10\n" in redis
    (default,) = [line for line in redis.splitlines() if line.startswith("user default ")]
    assert " off " in f"{default} " and not any(word in default for word in (" on", "nopass", "#", ">"))
    assert f"user wxrelay on #{digest} ~* &* +@all -@dangerous +info\n" in redis
    assert password not in redis and "requirepass" not in redis
    # ... with no admin user unless the inventory sets its password ...
    assert "user admin" not in redis
    assert "maxmemory-policy noeviction" in redis
    # ... and over TLS on its own port for the other hosts, with the certificates the redis role keeps ...
    tls = "/etc/redis/tls"
    settings = ["tls-port 6380", f"tls-cert-file {tls}/redis.crt", f"tls-key-file {tls}/redis.key"]
    settings += [f"tls-ca-cert-file {tls}/ca.crt", "tls-auth-clients no", 'tls-protocols "TLSv1.2 TLSv1.3"']
    for line in settings:
        assert f"\n{line}\n" in redis
    # ... its firewall lets the two worker hosts reach the TLS port, and nobody else; the plain port is
    # refused from the network (Redis binds both ports to the private address), so is the TLS port to others ...
    firewall = (front / "nftables.conf").read_text()
    assert "ip saddr 198.51.100.11 tcp dport 6380 accept" in firewall
    assert "ip saddr 198.51.100.12 tcp dport 6380 accept" in firewall
    assert "dport 6379 accept" not in firewall
    rules = [line.strip() for line in firewall.splitlines()]
    reject = rules.index("tcp dport { 6379, 6380 } reject with tcp reset")
    assert (
        rules.index('iif "lo" accept')
        < rules.index('ip saddr 198.51.100.12 tcp dport 6380 accept comment "work2"')
        < reject
    )
    assert "policy drop" in firewall and "tcp dport { 22, 80, 443 } accept" in firewall
    assert "6379" not in (worker / "nftables.conf").read_text() and "6380" not in (worker / "nftables.conf").read_text()
    # ... the workers use that address and the TLS port, checking its certificate against the CA the app role
    # copies from the broker; the front host, Redis's own, stays on plaintext loopback.
    tls_url = (
        f'WXRELAY_REDIS_URL="rediss://wxrelay:{password}@198.51.100.10:6380/0?ssl_ca_certs=/etc/wxrelay/redis-ca.crt"'
    )
    assert tls_url in (worker / "wxrelay.env").read_text()
    assert f'WXRELAY_REDIS_URL="redis://wxrelay:{password}@127.0.0.1:6379/0"' in (front / "wxrelay.env").read_text()
    # The new settings, at their defaults.
    env = (front / "wxrelay.env").read_text()
    assert 'WXRELAY_REQUIRE_ENCRYPTION="false"' in env and 'WXRELAY_ALLOWED_SOURCES=""' in env
    assert 'WXRELAY_TRUSTED_PROXIES="127.0.0.1,::1"' in env
    # Each host runs its own part.
    front_programs = (front / "supervisor.conf").read_text()
    worker_programs = (worker / "supervisor.conf").read_text()
    assert "[program:wxrelay-relay]" in front_programs and "[program:wxrelay-worker]" not in front_programs
    assert "[program:wxrelay-worker]" in worker_programs and "[program:wxrelay-relay]" not in worker_programs
    # Warm shutdown outlasts the longest task (90 s by default).
    assert "stopwaitsecs=120" in worker_programs


def test_a_single_host_keeps_redis_on_plaintext_loopback(tmp_path: Path) -> None:
    """One host: no TLS anywhere, Redis on loopback, its port closed to the network by the drop policy alone."""
    host = render(TESTS_DEPLOY / "inventory", tmp_path) / "rehearsal"
    redis = (host / "redis.conf").read_text()
    assert "bind 127.0.0.1\n" in redis and "port 6379\n" in redis and "tls-" not in redis
    assert 'WXRELAY_REDIS_URL="redis://wxrelay:' in (host / "wxrelay.env").read_text()
    assert (
        '@127.0.0.1:6379/0"\n' in (host / "wxrelay.env").read_text()
        and "rediss" not in (host / "wxrelay.env").read_text()
    )
    firewall = (host / "nftables.conf").read_text()
    assert "6379" not in firewall and "6380" not in firewall and "reject" not in firewall


@pytest.mark.parametrize("version, channels", [("7.0.15", "&* "), ("6.0.16", " ")], ids=["redis-7.0", "redis-6.0"])
def test_redis_users_by_version_and_the_admin_password_stays_out_of_the_env_file(
    tmp_path: Path, version: str, channels: str
) -> None:
    """Channel rules only where Redis has them; the admin's password in redis.conf, hashed, and nowhere else."""
    vault = run(
        [
            tool("ansible-vault"),
            "view",
            "--vault-password-file",
            str(TESTS_DEPLOY / "vault-password"),
            str(TESTS_DEPLOY / "inventory/group_vars/all/vault.yml"),
        ]
    )
    assert vault.returncode == 0, output(vault)
    admin = next(
        line.split(":", 1)[1].strip().strip('"')
        for line in vault.stdout.splitlines()
        if line.startswith("vault_wxrelay_redis_admin_password:")
    )
    digest = hashlib.sha256(admin.encode()).hexdigest()
    host = render(TESTS_DEPLOY / "inventory", tmp_path, "-e", f"redis_version={version}") / "rehearsal"
    redis = (host / "redis.conf").read_text()
    assert f"user admin on #{digest} ~* {channels}+@all\n" in redis and admin not in redis
    assert f" ~* {channels}+@all -@dangerous +info\n" in redis
    env = (host / "wxrelay.env").read_text()
    assert admin not in env and digest not in env and "ADMIN" not in env


# --- accounts ---------------------------------------------------------------------------------


def load_accounts(host: Path):
    """The accounts the appliance reads from a host's rendered env and accounts files (common.accounts)."""
    sys.path.insert(0, str(ROOT))
    from common import accounts
    from common.settings import Settings

    environ = {"WXRELAY_ACCOUNTS_FILE": str(host / "accounts.toml")}
    return accounts.load(Settings.from_env(environ, env_file=host / "wxrelay.env").validate(), environ)


def test_accounts_file_renders_to_toml_the_appliance_loads(tmp_path: Path) -> None:
    """The test inventory's accounts, with their vault secrets, as common.accounts reads them."""
    host = render(TESTS_DEPLOY / "inventory", tmp_path) / "rehearsal"
    document = tomllib.loads((host / "accounts.toml").read_text())
    assert set(document) == {"accounts"} and list(document["accounts"]) == ["shop", "news", "staff"]
    assert document["accounts"]["staff"]["agentid"] == 1000002
    assert document["accounts"]["news"]["late_replies"] is False
    assert 'WXRELAY_ACCOUNTS_FILE="/etc/wxrelay/accounts.toml"' in (host / "wxrelay.env").read_text()
    served = load_accounts(host)
    assert list(served) == ["default", "shop", "news", "staff"]
    shop, news, staff = served["shop"], served["news"], served["staff"]
    assert (shop.kind, shop.path, shop.modes, shop.appid) == (
        "official",
        "/wechat/shop",
        {"safe"},
        "wx1a2b3c4d5e6f7081",
    )
    assert (news.modes, news.aes_key, news.late_replies) == ({"plain"}, None, False)
    assert (staff.kind, staff.appid, staff.agentid, staff.modes) == ("wecom", "ww5a4b3c2d1e0f9876", 1000002, {"safe"})
    assert staff.api_base == "http://10.213.77.1:9180"
    assert len({account.token for account in served.values()}) == 4


def test_accounts_file_escapes_any_string(tmp_path: Path) -> None:
    """Strings as TOML basic strings whatever they hold; an agentid from the vault (a string) as a number."""
    awkward = 'a "quoted" \\ back\\slash\nnewline\ttab é 中文 ${NOT_SUBSTITUTED_HERE'
    account = {
        "name": "odd",
        "kind": "wecom",
        "corpid": "ww0123456789abcdef",
        "agentid": "1000003",
        "token": "oddtoken",
        "aes_key": "A" * 43,
        "bot": awkward,
        "modes": ["safe"],
        "late_replies": True,
        "aes_key_previous": None,
    }
    extra = json.dumps({"wxrelay_accounts": [account]})
    table = tomllib.loads(
        (render(TESTS_DEPLOY / "multihost", tmp_path, "-e", extra) / "front1/accounts.toml").read_text()
    )
    odd = table["accounts"]["odd"]
    assert odd["bot"] == awkward and odd["agentid"] == 1000003 and odd["late_replies"] is True
    assert "aes_key_previous" not in odd and odd["modes"] == ["safe"]


def test_no_accounts_no_accounts_file(tmp_path: Path) -> None:
    env = (render(TESTS_DEPLOY / "multihost", tmp_path) / "front1/wxrelay.env").read_text()
    assert 'WXRELAY_ACCOUNTS_FILE=""' in env and 'WECOM_API_BASE="https://qyapi.weixin.qq.com"' in env


def supervisor_processes(conf: Path) -> dict[str, list[str]]:
    """Every process of the rendered supervisor.conf, by program: PROGRAM:NAME as supervisorctl names it."""
    parser = configparser.RawConfigParser(strict=True)
    parser.read_string(conf.read_text())
    found = {}
    for section in parser.sections():
        program = section.removeprefix("program:")
        options = parser[section]
        start = int(options.get("numprocs_start", "0"))
        found[program] = [
            f"{program}:{options['process_name'] % {'process_num': n}}"
            for n in range(start, start + int(options["numprocs"]))
        ]
    return found


@pytest.mark.parametrize("pinned", [False, True], ids=["one-group", "two-groups"])
def test_handlers_restart_every_process_of_every_worker_group(tmp_path: Path, pinned: bool) -> None:
    """Restart wxrelay and Reload wxrelay accounts go through each process supervisor runs, one at a time."""
    extra = []
    if pinned:
        groups = [
            {
                "program": "wxrelay-worker",
                "name": "worker",
                "accounts": "{{ wxrelay_worker_accounts }}",
                "processes": 3,
            },
            {"program": "wxrelay-worker-r1", "name": "worker-r1", "accounts": "shop,staff", "processes": 2},
        ]
        extra = ["-e", json.dumps({"wxrelay_worker_groups": groups, "wxrelay_worker_accounts": "default,news"})]
    host = render(TESTS_DEPLOY / "inventory", tmp_path, *extra) / "rehearsal"
    programs = supervisor_processes(host / "supervisor.conf")
    handled = json.loads((host / "handler-processes.json").read_text())
    assert (
        handled["relays"] == programs.pop("wxrelay-relay") == [f"wxrelay-relay:relay-{p}" for p in (8001, 8002, 8003)]
    )
    assert handled["workers"] == [name for processes in programs.values() for name in processes]
    if pinned:
        assert list(programs) == ["wxrelay-worker", "wxrelay-worker-r1"] and len(handled["workers"]) == 5
        conf = (host / "supervisor.conf").read_text()
        assert 'WXRELAY_WORKER_ACCOUNTS="default,news"' in conf and 'WXRELAY_WORKER_ACCOUNTS="shop,staff"' in conf
    else:
        assert handled["workers"] == ["wxrelay-worker:worker-0", "wxrelay-worker:worker-1"]
        assert "WXRELAY_WORKER_ACCOUNTS" not in (host / "supervisor.conf").read_text()
    # Both handlers loop over those lists; the reload signals the relays, restarts the workers.
    handlers = {h["name"]: h for h in yaml_load(ANSIBLE_DIR / "roles/supervisor/handlers/main.yml")}
    assert handlers["Restart wxrelay"]["loop"] == "{{ supervisor_relay_processes + supervisor_worker_processes }}"
    reload = handlers["Reload wxrelay accounts"]
    assert "supervisor_worker_processes" in reload["loop"] and "'wxrelay-relay:*'" in reload["loop"]
    assert "'signal', 'HUP'" in reload["ansible.builtin.command"]["argv"]
    notified = [
        t for t in yaml_load(ANSIBLE_DIR / "roles/app/tasks/main.yml") if t["name"] == "Write the accounts file"
    ]
    assert notified[0]["notify"] == "Reload wxrelay accounts" and notified[0]["diff"] is False
    assert notified[0]["ansible.builtin.template"]["mode"] == "0640"


def yaml_load(path: Path):
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


# --- conventions ---------------------------------------------------------------------------


def test_secrets_follow_the_vault_convention() -> None:
    # The test vault is encrypted; the example ships only a placeholder file.
    assert (TESTS_DEPLOY / "inventory/group_vars/all/vault.yml").read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    example = ANSIBLE_DIR / "inventory/example/group_vars/all"
    assert not (example / "vault.yml").exists() and (example / "vault.yml.example").is_file()
    for inventory in (example, TESTS_DEPLOY / "inventory/group_vars/all"):
        plain = (inventory / "vars.yml").read_text()
        for secret in ("wechat_token", "wechat_appid", "wechat_aes_key", "wechat_appsecret", "redis_password"):
            assert f'wxrelay_{secret}: "{{{{ vault_wxrelay_{secret} }}}}"' in plain
    # The accounts' secrets too: every one from the vault.
    plain = (TESTS_DEPLOY / "inventory/group_vars/all/vars.yml").read_text()
    for account, fields in (("shop", "token aes_key appsecret"), ("news", "token"), ("staff", "token aes_key secret")):
        for field in fields.split():
            assert f'"{{{{ vault_wxrelay_{account}_{field} }}}}"' in plain
    # The admin's password is optional: a vault made before it existed still works.
    assert "wxrelay_redis_admin_password: \"{{ vault_wxrelay_redis_admin_password | default('') }}\"" in (
        (example / "vars.yml").read_text()
    )
    assert 'vault_wxrelay_redis_admin_password: ""' in (example / "vault.yml.example").read_text()


def load_wheelhouse_module():
    path = ANSIBLE_DIR / "roles/app/files/wheelhouse.py"
    spec = importlib.util.spec_from_file_location("wxrelay_wheelhouse", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_wheelhouse_follows_the_targets_python() -> None:
    """Dependencies are chosen by the target's markers, wheels by its tags."""
    pytest.importorskip("packaging")
    from packaging.requirements import Requirement

    wheelhouse = load_wheelhouse_module()
    environment = {
        "python_full_version": "3.11.2",
        "python_version": "3.11",
        "platform_machine": "x86_64",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    debian = wheelhouse.Target(environment, "2.36")
    newer = wheelhouse.Target({**environment, "python_full_version": "3.11.7"}, "2.36")
    # redis's dependency on Python < 3.11.3: Debian 12's 3.11.2 needs it.
    async_timeout = Requirement('async-timeout>=4.0.3; python_full_version < "3.11.3"')
    assert debian.wants(async_timeout, set()) and not newer.wants(async_timeout, set())
    packaging_for_redis = Requirement('packaging==26.3; extra == "redis"')
    assert debian.wants(packaging_for_redis, {"redis"}) and not debian.wants(packaging_for_redis, set())
    options = debian.pip_options
    assert options[options.index("--python-version") + 1] == "3.11.2"
    platforms = [options[i + 1] for i, o in enumerate(options) if o == "--platform"]
    assert platforms[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in platforms
    assert "manylinux_2_37_x86_64" not in platforms


# --- the rehearsal ------------------------------------------------------------------------------


def test_rehearsal_deploys_a_fresh_vps_idempotently_and_it_serves_wechat() -> None:
    sys.path.insert(0, str(ROOT))
    from deploy.rehearse.container import missing_requirements

    reason = missing_requirements()
    if reason:
        unavailable(f"cannot rehearse here: {reason}")
    tool("ansible-playbook")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy/rehearse/rehearse.py")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = process.communicate(timeout=REHEARSAL_TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM: the rehearsal tears its container and network down first.
        process.terminate()
        out, _ = process.communicate(timeout=120)
        pytest.fail(f"the rehearsal took more than {REHEARSAL_TIMEOUT} s:\n{out[-8000:]}")
    print(out)
    assert process.returncode == 0, out[-12000:]
    assert "changed=0" in out and "rehearsal passed" in out
    assert re.search(r"host restarted mid-traffic: (\d+) sent, \1 answered exactly once", out), out[-4000:]
