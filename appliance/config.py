"""What the local appliance runs with: the settings, its own Redis, and where its files live."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from common import accounts
from common.accounts import Accounts
from common.settings import Settings, environment
from common.worker_number import metrics_port
from wechat.exceptions import InvalidConfigError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = ".state"
# A unix socket path longer than this does not fit in sockaddr_un.
_MAX_SOCKET_PATH = 107
# The password goes into the Redis URL unquoted.
_REDIS_PASSWORD = re.compile(r"[A-Za-z0-9._~+=-]{8,}")
# The user the relays and workers sign in to Redis as (deploy/redis/redis.conf.j2).
REDIS_USER = "wxrelay"


@dataclass(frozen=True)
class Layout:
    """The state folder: rendered configs, logs, pids, the socket, Redis data."""

    state_dir: Path

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def redis_dir(self) -> Path:
        return self.state_dir / "redis"

    @property
    def env_file(self) -> Path:
        """The resolved settings every process of the running stack reads."""
        return self.state_dir / "wxrelay.env"

    @property
    def supervisord_conf(self) -> Path:
        return self.state_dir / "supervisord.conf"

    @property
    def programs_conf(self) -> Path:
        return self.state_dir / "supervisor" / "wxrelay.conf"

    @property
    def nginx_conf(self) -> Path:
        return self.state_dir / "nginx" / "nginx.conf"

    @property
    def nginx_site(self) -> Path:
        return self.state_dir / "nginx" / "wxrelay.conf"

    @property
    def redis_conf(self) -> Path:
        return self.state_dir / "redis.conf"

    @property
    def socket(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "supervisord.pid"


@dataclass(frozen=True)
class Local:
    """The settings of one local appliance, resolved."""

    settings: Settings
    layout: Layout
    redis_port: int
    redis_password: str
    # The ${NAME}s of the accounts file, from the environment or the owner's env file: the processes read
    # only the state folder's env file, which would otherwise hold only the settings.
    variables: Mapping[str, str] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:
        return f"redis://{REDIS_USER}:{self.redis_password}@127.0.0.1:{self.redis_port}/0"

    @property
    def relay_ports(self) -> list[int]:
        return [self.settings.relay_port + n for n in range(self.settings.relays)]

    @property
    def callback_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}/wechat"

    def accounts(self) -> Accounts:
        """The accounts it serves; those naming no Redis of their own use this appliance's."""
        return accounts.load(replace(self.settings, redis_url=self.redis_url, accounts_file=self.accounts_file))

    @property
    def accounts_file(self) -> str:
        # The processes run in the project's folder, not where `make run` was typed.
        return str(Path(self.settings.accounts_file).absolute()) if self.settings.accounts_file else ""

    def environ(self) -> dict[str, str]:
        """The variables the relays and workers run with: every process talks to this Redis."""
        return {
            **self.variables,
            **self.settings.as_environ(),
            "WXRELAY_REDIS_URL": self.redis_url,
            "WXRELAY_ACCOUNTS_FILE": self.accounts_file,
            "WXRELAY_SPOOL_DIR": str(self.layout.spool_dir),
            # The operator's: redis.conf keeps only its hash, the processes never see it.
            "WXRELAY_REDIS_ADMIN_PASSWORD": "",
        }


def env_file_path(environ: Mapping[str, str]) -> Path:
    """The owner's env file: WXRELAY_ENV_FILE, else .env here."""
    return Path(environ.get("WXRELAY_ENV_FILE") or ".env").absolute()


def _settings(environ: Mapping[str, str]) -> Settings:
    env_file = env_file_path(environ)
    return Settings.from_env(environ, env_file if env_file.is_file() else None)


def layout(environ: Mapping[str, str] | None = None) -> Layout:
    """Where the state folder is: WXRELAY_STATE_DIR (environment over env file), else .state here."""
    environ = os.environ if environ is None else environ
    found = Layout(Path(_settings(environ).state_dir or DEFAULT_STATE_DIR).absolute())
    if len(str(found.socket)) > _MAX_SOCKET_PATH:
        raise InvalidConfigError(
            f"the state folder {found.state_dir} is too deep for supervisord's socket: "
            "set WXRELAY_STATE_DIR to a shorter path"
        )
    return found


def load(environ: Mapping[str, str] | None = None) -> Local:
    """The appliance as the environment and the owner's env file configure it (for `run`)."""
    environ = os.environ if environ is None else environ
    settings = _settings(environ).validate()
    env_file = env_file_path(environ)
    values = environment(environ, env_file if env_file.is_file() else None)
    named = accounts.variables_of(Path(settings.accounts_file)) if settings.accounts_file else ()
    variables = {name: values[name] for name in named if name in values}
    local = Local(settings, layout(environ), settings.redis_port, _redis_password(settings.redis_url), variables)
    if settings.redis_admin_password is not None and not _REDIS_PASSWORD.fullmatch(settings.redis_admin_password):
        raise InvalidConfigError("WXRELAY_REDIS_ADMIN_PASSWORD needs 8 or more characters [A-Za-z0-9._~+=-]")
    _distinct_ports(local)
    local.accounts()  # checked now, one line per mistake, rather than by every relay at its start
    return local


def from_state(found: Layout) -> Local | None:
    """The appliance as it was started in this state folder (for `status` and `stop`), if ever."""
    if not found.env_file.is_file():
        return None
    settings = Settings.from_env({}, found.env_file)
    return Local(settings, found, settings.redis_port, _redis_password(settings.redis_url))


def _redis_password(url: str) -> str:
    password = unquote(urlsplit(url).password or "")
    if not _REDIS_PASSWORD.fullmatch(password):
        raise InvalidConfigError(
            "the local Redis needs a password of 8 or more characters [A-Za-z0-9._~+=-] in WXRELAY_REDIS_URL "
            "(redis://wxrelay:PASSWORD@127.0.0.1:PORT/0); remove WXRELAY_REDIS_URL from the env file "
            "to have one generated"
        )
    return password


def worker_groups(local: Local) -> list[dict[str, object]]:
    """The workers of the appliance's Redis, and one worker for each other Redis an account names."""
    groups: list[dict[str, object]] = [
        {"program": "wxrelay-worker", "name": "worker", "accounts": "", "processes": local.settings.workers}
    ]
    accounts = local.accounts()
    for n, url in enumerate((url for url in accounts.redis_urls if url != local.redis_url), start=1):
        names = ",".join(name for name, account in accounts.items() if account.redis_url == url)
        groups.append({"program": f"wxrelay-worker-r{n}", "name": f"worker-r{n}", "accounts": names, "processes": 1})
    return groups


def worker_metrics_ports(local: Local) -> list[tuple[int, str]]:
    """Where each worker serves /metrics, and the worker (its node name as supervisor starts it: NAMEn);
    none when WXRELAY_WORKER_METRICS_PORT is 0."""
    first = local.settings.worker_metrics_port
    nodes = [f"{group['name']}{n}" for group in worker_groups(local) for n in range(int(group["processes"]))]  # type: ignore[call-overload]
    return [(metrics_port(first, f"{node}@"), node) for node in nodes] if first else []


def _distinct_ports(local: Local) -> None:
    ports = {"WXRELAY_HTTP_PORT": [local.settings.http_port], "WXRELAY_REDIS_PORT": [local.redis_port]}
    ports["relay ports (WXRELAY_RELAY_PORT + WXRELAY_RELAYS)"] = local.relay_ports
    for port, node in worker_metrics_ports(local):
        ports[f"{node}'s metrics port (WXRELAY_WORKER_METRICS_PORT + its number)"] = [port]
    seen: dict[int, str] = {}
    for name, numbers in ports.items():
        for port in numbers:
            if not 0 < port < 65536:
                raise InvalidConfigError(f"{name}: {port} is not a port")
            if port in seen:
                raise InvalidConfigError(f"{name} and {seen[port]} both use port {port}")
            seen[port] = name
