"""The one source of configuration: the environment, over an optional env file.

Every process of the appliance (relay, worker, simulator, local runner) reads
the same variables; the README documents them in one table.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from common import redis_tls
from wechat.exceptions import InvalidConfigError

# In WXRELAY_ALLOWED_SOURCES: the addresses WeChat's getcallbackip API lists.
WECHAT_SOURCES = "wechat"


def _float(value: str) -> float:
    return float(value)


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be positive")
    return number


def _count(value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise ValueError("a whole number of 0 or more")
    return int(value)


def _pool(value: str) -> str:
    if value not in ("threads", "prefork"):
        raise ValueError("must be threads or prefork")
    return value


def _optional(value: str) -> str | None:
    return value or None


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _text(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def _log_level(value: str) -> str:
    if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value.upper()


def _log_format(value: str) -> str:
    if value not in ("text", "json"):
        raise ValueError("must be text or json")
    return value


def _port_or_off(value: str) -> int:
    number = int(value)
    if not 0 <= number < 65536:
        raise ValueError("must be a port, or 0 for none")
    return number


def _late_path(value: str) -> str:
    if value not in ("", "api", "pickup"):
        raise ValueError("must be api or pickup (empty: api with WECHAT_APPSECRET, else pickup)")
    return value


def _sources(value: str) -> tuple[str, ...]:
    """Addresses, networks, and `wechat` for WeChat's published callback addresses."""
    entries = tuple(entry.strip() for entry in value.split(",") if entry.strip())
    for entry in entries:
        if entry != WECHAT_SOURCES:
            _network(entry)
    return entries


def _names(value: str) -> tuple[str, ...]:
    return tuple(entry.strip() for entry in value.split(",") if entry.strip())


def _networks(value: str) -> tuple[str, ...]:
    entries = tuple(entry.strip() for entry in value.split(",") if entry.strip())
    for entry in entries:
        _network(entry)
    return entries


def _network(entry: str) -> None:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an address or network") from None


def environment(environ: Mapping[str, str] | None = None, env_file: str | Path | None = None) -> dict[str, str]:
    """The variables the appliance reads: the environment over the env file.

    The env file is WXRELAY_ENV_FILE, else `.env` in the working directory
    when it exists."""
    environ = os.environ if environ is None else environ
    if env_file is None:
        env_file = environ.get("WXRELAY_ENV_FILE") or (".env" if Path(".env").is_file() else None)
    values: dict[str, str] = {}
    if env_file is not None:
        values.update({k: v or "" for k, v in dotenv_values(env_file).items()})
    values.update(environ)
    return values


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    convert: Callable[[str], Any] = str
    doc: str = ""


# attribute → variable, default, converter, doc. The README's table mirrors it.
SETTINGS: dict[str, Setting] = {
    "token": Setting("WECHAT_TOKEN", "", str, "Token set in the account's server configuration."),
    "appid": Setting("WECHAT_APPID", "", str, "The account's AppID."),
    "aes_key": Setting("WECHAT_AES_KEY", "", _optional, "EncodingAESKey (43 chars); empty = plaintext only."),
    "aes_key_previous": Setting(
        "WECHAT_AES_KEY_PREVIOUS", "", _optional, "The previous EncodingAESKey, kept during rotation."
    ),
    "appsecret": Setting(
        "WECHAT_APPSECRET", "", _optional, "AppSecret; enables late replies by the customer-service API."
    ),
    "api_base": Setting("WECHAT_API_BASE", "https://api.weixin.qq.com", str, "WeChat API base URL."),
    "wecom_api_base": Setting("WECOM_API_BASE", "https://qyapi.weixin.qq.com", str, "WeCom API base URL."),
    "accounts_file": Setting(
        "WXRELAY_ACCOUNTS_FILE",
        "",
        str,
        "The accounts file (TOML, see Accounts): more official accounts and WeCom apps, beside `default`.",
    ),
    "worker_accounts": Setting(
        "WXRELAY_WORKER_ACCOUNTS",
        "",
        _names,
        "A worker: the accounts whose messages it runs, comma-separated (all on one Redis); empty = every "
        "account on WXRELAY_REDIS_URL.",
    ),
    "redis_url": Setting("WXRELAY_REDIS_URL", "redis://127.0.0.1:6379/0", str, "Broker, results, ledger."),
    "redis_admin_password": Setting(
        "WXRELAY_REDIS_ADMIN_PASSWORD",
        "",
        _optional,
        "Local appliance: password of its Redis's `admin` user (every command, for redis-cli); empty = no such user.",
    ),
    "require_encryption": Setting(
        "WXRELAY_REQUIRE_ENCRYPTION",
        "false",
        _bool,
        "true: plaintext messages are refused (403); only safe mode (and compat mode, decrypted) gets in.",
    ),
    "allowed_sources": Setting(
        "WXRELAY_ALLOWED_SOURCES",
        "",
        _sources,
        "Client addresses let in, comma-separated (addresses, networks, `wechat` for the list WeChat's "
        "getcallbackip API gives, refreshed hourly; needs WECHAT_APPSECRET); empty = any.",
    ),
    "trusted_proxies": Setting(
        "WXRELAY_TRUSTED_PROXIES",
        "127.0.0.1,::1",
        _networks,
        "Where nginx connects to the relays from: only from these is X-Real-IP believed.",
    ),
    "bot": Setting("WXRELAY_BOT", "appserver.example_bot:bot", str, "The bot: module:attribute or file.py:attribute."),
    "ai_base_url": Setting(
        "WXRELAY_AI_BASE_URL",
        "",
        str,
        "The AI example bot (appserver.examples.ai_chat): an OpenAI-compatible API, e.g. https://api.openai.com/v1.",
    ),
    "ai_api_key": Setting("WXRELAY_AI_API_KEY", "", _optional, "Its API key, sent as a bearer token; empty = none."),
    "ai_model": Setting("WXRELAY_AI_MODEL", "gpt-4o-mini", str, "The model it asks."),
    "wechat_timeout": Setting("WXRELAY_WECHAT_TIMEOUT", "5.0", _float, "How long WeChat waits per delivery (s)."),
    "reply_budget": Setting("WXRELAY_REPLY_BUDGET", "4.5", _float, "Wait on the last delivery before `success` (s)."),
    "deliveries": Setting("WXRELAY_DELIVERIES", "3", _positive_int, "Deliveries WeChat makes of one message."),
    "timestamp_window": Setting("WXRELAY_TIMESTAMP_WINDOW", "300", _positive_int, "Accepted clock skew (s)."),
    "max_body": Setting("WXRELAY_MAX_BODY", "65536", _positive_int, "Largest accepted request body (bytes)."),
    "dedupe_ttl": Setting(
        "WXRELAY_DEDUPE_TTL", "600", _positive_int, "How long the record of a message still running lives (s)."
    ),
    "redis_timeout": Setting(
        "WXRELAY_REDIS_TIMEOUT",
        "1.0",
        _float,
        "A relay's Redis call fails after this long: the message is spooled (s).",
    ),
    "spool_dir": Setting(
        "WXRELAY_SPOOL_DIR", ".state/spool", str, "Where each relay keeps its spool of messages Redis could not take."
    ),
    "lease": Setting(
        "WXRELAY_LEASE",
        "15",
        _positive_int,
        "A worker renews its hold on each message it runs; a dead worker's messages run again this long after (s).",
    ),
    "session_ttl": Setting("WXRELAY_SESSION_TTL", "86400", _positive_int, "Idle lifetime of `msg.session` (s)."),
    "late_path": Setting(
        "WXRELAY_LATE_PATH",
        "",
        _late_path,
        "How a reply that missed every delivery reaches the user: `api` (customer-service API) or `pickup` (kept "
        "for the user's next message); empty = `api` with WECHAT_APPSECRET, else `pickup`.",
    ),
    "pickup_text": Setting(
        "WXRELAY_PICKUP_TEXT",
        "正在思考，稍后发送任意消息获取回复",
        _text,
        "`pickup`: what the last delivery answers while the reply is not ready (every account's default).",
    ),
    "pickup_ttl": Setting(
        "WXRELAY_PICKUP_TTL", "172800", _positive_int, "`pickup`: how long kept replies wait for the user (s)."
    ),
    "queue": Setting("WXRELAY_QUEUE", "wxrelay", str, "Celery queue of the message task."),
    "task_soft_time_limit": Setting("WXRELAY_TASK_SOFT_TIME_LIMIT", "60", _positive_int, "Handler soft limit (s)."),
    "task_time_limit": Setting("WXRELAY_TASK_TIME_LIMIT", "90", _positive_int, "Handler hard limit (s)."),
    "log_level": Setting("WXRELAY_LOG_LEVEL", "INFO", _log_level, "Log level of every process."),
    "log_format": Setting(
        "WXRELAY_LOG_FORMAT",
        "text",
        _log_format,
        "text: readable lines; json: one JSON object a line in every process (with the message key, account, "
        "outcome and duration where a line is about a message), for log shippers.",
    ),
    "worker_metrics_port": Setting(
        "WXRELAY_WORKER_METRICS_PORT",
        "8101",
        _port_or_off,
        "First worker's Prometheus /metrics port on 127.0.0.1 (worker n: +n; never behind nginx); 0 = none.",
    ),
    "public_url": Setting(
        "WXRELAY_PUBLIC_URL",
        "",
        str,
        "The callback URL as WeChat reaches it (https://wx.example.com/wechat): `make doctor` checks URL "
        "verification and the certificate through it; empty = not checked.",
    ),
    "state_dir": Setting(
        "WXRELAY_STATE_DIR", ".state", str, "Local appliance: folder of its configs, logs, pids and Redis data."
    ),
    "redis_port": Setting("WXRELAY_REDIS_PORT", "6390", _positive_int, "Local appliance: port of its own Redis."),
    "http_port": Setting("WXRELAY_HTTP_PORT", "8080", _positive_int, "Local appliance: nginx port."),
    "relay_port": Setting("WXRELAY_RELAY_PORT", "8001", _positive_int, "First relay port (relay n: +n)."),
    "relays": Setting(
        "WXRELAY_RELAYS",
        "2",
        _positive_int,
        "Local appliance: relay processes, standby ones included. One answers some 1,000 msg/s on a core; "
        "add one per two cores past two.",
    ),
    "standby_relays": Setting(
        "WXRELAY_STANDBY_RELAYS",
        "1",
        _count,
        "Of the relays, how many stand by (the last ones): nginx passes them a request only when the others "
        "cannot take it (a relay killed or restarting). 0: every relay serves, and one relay alone is a "
        "single point of failure.",
    ),
    "workers": Setting("WXRELAY_WORKERS", "2", _positive_int, "Local appliance: worker processes."),
    "worker_pool": Setting(
        "WXRELAY_WORKER_POOL",
        "threads",
        _pool,
        "threads: many I/O-bound handlers wait at once (the soft limit cancels async ones); prefork: "
        "CPU-bound bots, Celery enforces both time limits (set the concurrency to the cores).",
    ),
    "worker_concurrency": Setting(
        "WXRELAY_WORKER_CONCURRENCY",
        "50",
        _positive_int,
        "Threads (or prefork processes) of one worker process: its sync handlers at once (started as needed).",
    ),
    "async_concurrency": Setting(
        "WXRELAY_ASYNC_CONCURRENCY",
        "1000",
        _positive_int,
        "threads pool: async handlers one worker process keeps awaiting beside its threads (a coroutine each).",
    ),
    "cpu_pinning": Setting(
        "WXRELAY_CPU_PINNING",
        "true",
        _bool,
        "Each relay and each threads-pool worker keeps to one core, taken in turn (5% less CPU a message on "
        "two cores); false: the kernel moves them.",
    ),
}


@dataclass(frozen=True)
class Settings:
    token: str
    appid: str
    aes_key: str | None
    aes_key_previous: str | None
    appsecret: str | None
    api_base: str
    wecom_api_base: str
    accounts_file: str
    worker_accounts: tuple[str, ...]
    redis_url: str
    redis_admin_password: str | None
    require_encryption: bool
    allowed_sources: tuple[str, ...]
    trusted_proxies: tuple[str, ...]
    bot: str
    ai_base_url: str
    ai_api_key: str | None
    ai_model: str
    wechat_timeout: float
    reply_budget: float
    deliveries: int
    timestamp_window: int
    max_body: int
    dedupe_ttl: int
    redis_timeout: float
    spool_dir: str
    lease: int
    session_ttl: int
    late_path: str
    pickup_text: str
    pickup_ttl: int
    queue: str
    task_soft_time_limit: int
    task_time_limit: int
    log_level: str
    log_format: str
    worker_metrics_port: int
    public_url: str
    state_dir: str
    redis_port: int
    http_port: int
    relay_port: int
    relays: int
    standby_relays: int
    workers: int
    worker_pool: str
    worker_concurrency: int
    async_concurrency: int
    cpu_pinning: bool

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = None) -> Settings:
        """Read the settings; variables in the environment override the env file."""
        values = environment(environ, env_file)
        parsed: dict[str, Any] = {}
        for attribute, setting in SETTINGS.items():
            raw = values.get(setting.name, setting.default).strip()
            try:
                parsed[attribute] = setting.convert(raw)
            except ValueError as exc:
                raise InvalidConfigError(f"{setting.name}={raw!r} is invalid: {exc}") from None
        return cls(**parsed)

    def validate(self) -> Settings:
        """Refuse a configuration the relay cannot serve, with one clear line (the accounts: common.accounts)."""
        if self.reply_budget >= self.wechat_timeout:
            raise InvalidConfigError("WXRELAY_REPLY_BUDGET must be shorter than WXRELAY_WECHAT_TIMEOUT")
        if self.standby_relays >= self.relays:
            raise InvalidConfigError(
                f"WXRELAY_STANDBY_RELAYS={self.standby_relays} leaves none of WXRELAY_RELAYS={self.relays} "
                "relays serving: stand fewer by (0 for none)"
            )
        redis_tls.check(self.redis_url, "WXRELAY_REDIS_URL")
        return self

    def as_environ(self) -> dict[str, str]:
        """The settings as variables, for child processes and rendered env files."""
        out: dict[str, str] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None:
                value = ""
            elif isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, tuple):
                value = ",".join(value)
            out[SETTINGS[field.name].name] = str(value)
        return out
