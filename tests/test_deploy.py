"""The Ansible deployment (deploy/ansible): static checks, and the rehearsal.

Static: yamllint and ansible-lint (production profile) clean, the playbook's
syntax, `nginx -t` on the rendered site, the wiring of a spread-out
inventory, the vault convention, the wheelhouse's marker logic, and
`vagrant validate`. Then the rehearsal (deploy/rehearse): a fresh Debian 12
container, two converges (the second with changed=0), end-to-end checks.

What this machine lacks (root, systemd-nspawn, Ansible, vagrant …) skips a
test with the reason, except under CI (the CI variable set, as .ci/run
runs), where everything is installed and a missing tool is a failure.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE_DIR = ROOT / "deploy" / "ansible"
TESTS_DEPLOY = ROOT / "tests" / "deploy"
VENV_BIN = Path(sys.prefix) / "bin"
MANDATORY = bool(os.environ.get("CI"))
# The bound for a whole rehearsal from a fresh tree.
REHEARSAL_TIMEOUT = 8 * 60


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
    result = run([tool("yamllint"), "--strict", "deploy/ansible", "tests/deploy", ".yamllint", ".ansible-lint"])
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
    # Every relay port of the test inventory (3 relays from 8001), keepalive,
    # retries on connection errors only, TLS, a small body limit.
    for port in (8001, 8002, 8003):
        assert f"127.0.0.1:{port}" in text
    assert "keepalive" in text and "proxy_next_upstream error;" in text
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
    # ... its firewall lets the two worker hosts in, and nobody else ...
    firewall = (front / "nftables.conf").read_text()
    assert "ip saddr 198.51.100.11 tcp dport 6379 accept" in firewall
    assert "ip saddr 198.51.100.12 tcp dport 6379 accept" in firewall
    assert "policy drop" in firewall and "tcp dport { 22, 80, 443 } accept" in firewall
    assert "6379" not in (worker / "nftables.conf").read_text()
    # ... the workers use that address, user and password, the front host loopback.
    url = 'WXRELAY_REDIS_URL="redis://wxrelay:{}@{}:6379/0"'
    assert url.format(password, "198.51.100.10") in (worker / "wxrelay.env").read_text()
    assert url.format(password, "127.0.0.1") in (front / "wxrelay.env").read_text()
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


def test_vagrantfile_is_valid() -> None:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        unavailable("vagrant is not installed (apt-get install --no-install-recommends vagrant)")
    result = subprocess.run(
        [vagrant, "validate", "--ignore-provider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"},
    )
    assert result.returncode == 0, output(result)


# --- the rehearsal ------------------------------------------------------------------------------


def test_rehearsal_deploys_a_fresh_vps_idempotently_and_it_serves_wechat() -> None:
    sys.path.insert(0, str(ROOT))
    from deploy.rehearse.rehearse import missing_requirements

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
