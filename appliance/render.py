"""The configuration of the local stack, rendered from the templates a server
uses (deploy/), with local values: one source of truth for how it runs."""

from __future__ import annotations

import grp
import hashlib
import math
import os
import pwd
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jinja2

from appliance import envfile
from appliance.config import REDIS_USER, ROOT, Local, worker_groups
from appliance.system import ApplianceError, binary

TEMPLATES = ROOT / "deploy"
# Extra seconds a worker gets past the hard time limit to wind down.
_WORKER_STOP_MARGIN = 5
_RESOLVED_HEADER = """\
# Written by `python -m appliance run`: the settings the running stack reads,
# resolved from the environment over the env file. Edit the env file, not this.
"""


@dataclass(frozen=True)
class Tools:
    redis_server: str
    nginx: str
    supervisord: str
    nginx_error_log_flag: bool
    redis_channel_rules: str

    @classmethod
    def find(cls) -> Tools:
        nginx, redis_server = binary("nginx", "nginx"), binary("redis-server", "redis-server")
        return cls(
            redis_server,
            nginx,
            binary("supervisord", "supervisor"),
            _has_e_flag(nginx),
            _channel_rules(redis_server),
        )


def _has_e_flag(nginx: str) -> bool:
    """nginx learnt -e (the error log before the configuration is read) in 1.19.5."""
    answer = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10)
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", answer.stderr + answer.stdout)
    return match is not None and tuple(map(int, match.groups())) >= (1, 19, 5)


def _channel_rules(redis_server: str) -> str:
    """Redis 6.2 learnt ACL rules for pub/sub channels (and 7.0 denies channels without one)."""
    answer = subprocess.run([redis_server, "--version"], capture_output=True, text=True, timeout=10)
    match = re.search(r"v=(\d+)\.(\d+)", answer.stdout)
    return "&*" if match is None or tuple(map(int, match.groups())) >= (6, 2) else ""


def _sha256(password: str | None) -> str:
    return hashlib.sha256(password.encode()).hexdigest() if password else ""


def venv() -> Path:
    """The virtualenv running this, which the stack's processes run too."""
    prefix = Path(sys.prefix)
    if not (prefix / "bin" / "python").exists() or not (prefix / "bin" / "celery").exists():
        raise ApplianceError(f"run this with the project's virtualenv (make run), not {sys.executable}")
    return prefix


# As the Ansible role's default (deploy/ansible/roles/nginx/defaults/main.yml).
NGINX_WORKER_CONNECTIONS = 8192


def nginx_user() -> str:
    """nginx's `user` (user and group): root's nginx would run its workers as nobody, who
    cannot enter the 0700 state folder to buffer a request body there (a 500). Anyone
    else's nginx keeps its workers as that user: ''."""
    if os.geteuid() != 0:
        return ""
    return f"{pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name}"


def values(local: Local, tools: Tools) -> dict[str, object]:
    """The templates' variables; the Ansible roles set the same names with a server's values."""
    settings, layout = local.settings, local.layout
    return {
        "wxrelay_app_dir": str(ROOT),
        "wxrelay_venv": str(venv()),
        "wxrelay_state_dir": str(layout.state_dir),
        "wxrelay_run_dir": str(layout.run_dir),
        "wxrelay_log_dir": str(layout.log_dir),
        "wxrelay_env_file": str(layout.env_file),
        # Empty: every process runs as the user who ran `make run`.
        "wxrelay_user": "",
        # supervisor
        "wxrelay_supervisor_socket": str(layout.socket),
        "wxrelay_supervisor_programs": str(layout.programs_conf),
        "wxrelay_redis_server": tools.redis_server,
        "wxrelay_redis_conf": str(layout.redis_conf),
        "wxrelay_nginx": tools.nginx,
        "wxrelay_nginx_conf": str(layout.nginx_conf),
        "wxrelay_nginx_error_log_flag": tools.nginx_error_log_flag,
        "wxrelay_run_relays": True,
        "wxrelay_run_workers": True,
        "wxrelay_relay_address": "127.0.0.1",
        "wxrelay_relays": settings.relays,
        "wxrelay_standby_relays": settings.standby_relays,
        "wxrelay_relay_port": settings.relay_port,
        "wxrelay_workers": settings.workers,
        "wxrelay_worker_groups": worker_groups(local),
        "wxrelay_worker_stop_wait": settings.task_time_limit + _WORKER_STOP_MARGIN,
        # nginx
        "wxrelay_nginx_user": nginx_user(),
        "wxrelay_nginx_site": str(layout.nginx_site),
        "nginx_worker_connections": NGINX_WORKER_CONNECTIONS,
        "wxrelay_relay_hosts": ["127.0.0.1"],
        "wxrelay_http_port": settings.http_port,
        "wxrelay_https_port": 8443,
        "wxrelay_listen_default": False,
        "wxrelay_tls_certificate": "",
        "wxrelay_tls_certificate_key": "",
        "wxrelay_server_name": "_",
        "wxrelay_max_body": settings.max_body,
        # A relay holds a delivery until WeChat would hang up; nginx waits longer.
        "wxrelay_proxy_read_timeout": math.ceil(settings.wechat_timeout) + 5,
        # Redis
        "wxrelay_redis_bind": "127.0.0.1",
        "wxrelay_redis_port": local.redis_port,
        "wxrelay_redis_user": REDIS_USER,
        "wxrelay_redis_password_sha256": _sha256(local.redis_password),
        "wxrelay_redis_admin_password_sha256": _sha256(settings.redis_admin_password),
        "wxrelay_redis_channel_rules": tools.redis_channel_rules,
        "wxrelay_redis_dir": str(layout.redis_dir),
        # Empty: Redis logs to stdout, which supervisor keeps in logs/redis.log.
        "wxrelay_redis_logfile": "",
        "wxrelay_redis_maxmemory": "256mb",
    }


def render(local: Local, tools: Tools) -> dict[Path, str]:
    """Every file of the stack's configuration, by where it goes in the state folder."""
    # Ansible's template module trims blocks; the same here keeps both renderings alike.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
    )
    variables = values(local, tools)
    layout = local.layout
    targets = {
        "supervisor/supervisord.conf.j2": layout.supervisord_conf,
        "supervisor/wxrelay.conf.j2": layout.programs_conf,
        "nginx/nginx.conf.j2": layout.nginx_conf,
        "nginx/wxrelay.conf.j2": layout.nginx_site,
        "redis/redis.conf.j2": layout.redis_conf,
    }
    rendered: dict[Path, str] = {}
    for name, target in targets.items():
        try:
            rendered[target] = env.get_template(name).render(variables)
        except jinja2.UndefinedError as exc:
            # A variable the Ansible roles set and the local run does not, yet.
            raise ApplianceError(f"deploy/{name}: {exc.message}; appliance/render.py must set it") from None
    rendered[layout.env_file] = envfile.render(local.environ(), _RESOLVED_HEADER)
    return rendered


def changed(rendered: dict[Path, str]) -> list[Path]:
    """The files that differ from what the running stack was started with."""
    return [path for path, text in rendered.items() if not path.is_file() or path.read_text() != text]


def write(local: Local, rendered: dict[Path, str]) -> None:
    layout = local.layout
    # The owner's alone: Redis's data holds the access_token, the logs the users' messages.
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    layout.state_dir.chmod(0o700)
    for directory in (layout.run_dir, layout.log_dir, layout.redis_dir):
        directory.mkdir(parents=True, exist_ok=True)
    # Passwords and keys: the resolved settings and redis.conf.
    private = {layout.env_file, layout.redis_conf}
    for path, text in rendered.items():
        if path in private:
            envfile.write_private(path, text)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
