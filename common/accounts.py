"""The accounts one appliance serves: official accounts and WeCom apps.

Each account has its URL (`/wechat/<name>`), its keys, its bot, its queue and
its Redis. They come from the accounts file (WXRELAY_ACCOUNTS_FILE, TOML) and,
as the account named `default` on `/wechat`, from the WECHAT_* settings — the
single-account configuration, which keeps working as it is.

    [accounts.shop]
    kind = "official"                 # or "wecom"
    token = "..."
    aes_key = "..."                   # EncodingAESKey; optional for official accounts
    appid = "wx..."                   # wecom: corpid = "ww...", agentid = 1000002
    secret = "${SHOP_APPSECRET}"      # ${NAME}: from the environment, not the file

Everything is checked when a process starts; each mistake is one line naming
the account and the field.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import redis_tls
from common.ledger import account_of
from common.settings import WECHAT_SOURCES, Settings, environment
from wechat.crypto import MessageCrypto, decode_aes_key
from wechat.exceptions import InvalidConfigError
from wechat.signature import validate_token

DEFAULT = "default"
OFFICIAL, WECOM = "official", "wecom"
MODES = ("plain", "compat", "safe")
# A URL path segment, a Redis key part and a Celery queue suffix alike.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FIELDS = {
    "kind", "token", "aes_key", "aes_key_previous", "appid", "corpid", "agentid", "secret",
    "bot", "modes", "late_replies", "late_path", "pickup_text", "redis_url", "typing",
}  # fmt: skip
_SECRETS = ("token", "aes_key", "aes_key_previous", "secret", "redis_url")


@dataclass(frozen=True)
class Account:
    name: str
    kind: str
    token: str
    aes_key: str | None
    aes_key_previous: str | None
    # The ReceiveId of encrypted messages: the AppID, or a WeCom app's CorpID.
    appid: str
    agentid: int | None
    secret: str | None
    bot: str
    modes: frozenset[str]
    late_replies: bool
    # How a reply that missed every delivery goes: "api" (customer-service API or WeCom's message/send) or
    # "pickup" (kept for the passive reply to the user's next message), and what the last delivery says then.
    late_path: str
    pickup_text: str
    redis_url: str
    queue: str
    api_base: str
    # WeChat's "typing…" once a reply has missed the first delivery (appserver/typing_indicator.py).
    typing: bool = False

    @property
    def path(self) -> str:
        return "/wechat" if self.name == DEFAULT else f"/wechat/{self.name}"

    @property
    def keeps_for_pickup(self) -> bool:
        """Its late replies wait for the user's next message: the last delivery says so."""
        return self.late_replies and self.late_path == "pickup"

    @property
    def token_owner(self) -> str:
        """Whose access_token this account uses: an AppID's, or one WeCom app's (each has its own secret)."""
        return f"{self.appid}:{self.agentid}" if self.kind == WECOM else self.appid or self.name

    def crypto(self) -> MessageCrypto | None:
        if not self.aes_key:
            return None
        return MessageCrypto(self.token, self.aes_key, self.appid, self.aes_key_previous)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What a log line must never show."""
        return tuple(value for value in (self.token, self.aes_key, self.aes_key_previous, self.secret) if value)


class Accounts(Mapping[str, Account]):
    def __init__(self, accounts: dict[str, Account]) -> None:
        self._accounts = accounts

    def __getitem__(self, name: str) -> Account:
        return self._accounts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._accounts)

    def __len__(self) -> int:
        return len(self._accounts)

    @property
    def redis_urls(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(account.redis_url for account in self.values()))

    def of_key(self, ledger_key: str) -> Account | None:
        return self._accounts.get(account_of(ledger_key))


def load(settings: Settings, environ: Mapping[str, str] | None = None) -> Accounts:
    """The accounts of this appliance, checked; raises InvalidConfigError with one line."""
    environ = environment() if environ is None else environ
    accounts: dict[str, Account] = {}
    if settings.token:
        accounts[DEFAULT] = _default(settings)
    if settings.accounts_file:
        for name, table in _read(Path(settings.accounts_file)).items():
            if name in accounts:
                raise InvalidConfigError(
                    f"accounts file: account {name!r} is also configured by WECHAT_TOKEN; keep one of the two"
                )
            accounts[name] = _account(name, table, settings, environ)
    if not accounts:
        raise InvalidConfigError("no account: set WECHAT_TOKEN, or list accounts in WXRELAY_ACCOUNTS_FILE")
    if WECHAT_SOURCES in settings.allowed_sources and not any(
        account.kind == OFFICIAL and account.secret for account in accounts.values()
    ):
        raise InvalidConfigError(
            "WXRELAY_ALLOWED_SOURCES=wechat needs an official account's AppSecret to fetch WeChat's addresses; "
            "without one, list them yourself"
        )
    return Accounts(accounts)


def variables_of(path: Path) -> tuple[str, ...]:
    """The ${NAME}s an accounts file takes from the environment: what a process serving it must be given."""
    try:
        return tuple(dict.fromkeys(_VARIABLE.findall(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError):
        return ()  # load() says what is wrong with the file


def _default(settings: Settings) -> Account:
    modes = {"plain", "compat", "safe"} if settings.aes_key else {"plain"}
    if settings.require_encryption:
        if not settings.aes_key:
            raise InvalidConfigError("WXRELAY_REQUIRE_ENCRYPTION needs WECHAT_AES_KEY (safe mode)")
        modes.discard("plain")
    account = Account(
        DEFAULT, OFFICIAL, settings.token, settings.aes_key, settings.aes_key_previous, settings.appid, None,
        settings.appsecret, settings.bot, frozenset(modes), True, _late_path(settings.late_path, settings.appsecret),
        settings.pickup_text, settings.redis_url, settings.queue, settings.api_base,
    )  # fmt: skip
    _check_keys(account, lambda field: _SETTING_NAMES[field])
    return account


_SETTING_NAMES = {"token": "WECHAT_TOKEN", "aes_key": "WECHAT_AES_KEY", "aes_key_previous": "WECHAT_AES_KEY_PREVIOUS"}


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidConfigError(f"WXRELAY_ACCOUNTS_FILE: no file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidConfigError(f"WXRELAY_ACCOUNTS_FILE: cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfigError(f"accounts file {path}: not valid TOML: {exc}") from None
    unknown = set(document) - {"accounts"}
    if unknown:
        raise InvalidConfigError(f"accounts file: unknown table {sorted(unknown)[0]!r}: accounts go in [accounts.NAME]")
    tables = document.get("accounts", {})
    for name, table in tables.items():
        if not _NAME.fullmatch(name):
            raise InvalidConfigError(
                f"accounts file: account name {name!r} must be 1-32 characters [a-z0-9_-], starting with a letter "
                "or digit (it is the URL's last segment)"
            )
        if not isinstance(table, dict):
            raise InvalidConfigError(f"accounts file: accounts.{name} must be a table")
    return tables


def _account(name: str, table: dict[str, Any], settings: Settings, environ: Mapping[str, str]) -> Account:
    where = f"accounts file: {name}"
    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise InvalidConfigError(f"{where}: unknown field {unknown[0]!r}")

    def text(field: str, default: str = "") -> str:
        value = table.get(field, default)
        if not isinstance(value, str):
            raise InvalidConfigError(f"{where}.{field} must be a string")
        if field in _SECRETS:
            value = _substitute(value, f"{where}.{field}", environ)
        return value.strip()

    kind = text("kind", OFFICIAL)
    if kind not in (OFFICIAL, WECOM):
        raise InvalidConfigError(f"{where}.kind must be official or wecom, not {kind!r}")
    wecom = kind == WECOM
    appid = text("corpid" if wecom else "appid")
    if (wrong := "appid" if wecom else "corpid") in table:
        raise InvalidConfigError(f"{where}: a {kind} account has no {wrong}; use {'corpid' if wecom else 'appid'}")
    agentid = table.get("agentid")
    if wecom:
        if not appid:
            raise InvalidConfigError(f"{where}.corpid is required for a WeCom app")
        if not isinstance(agentid, int) or isinstance(agentid, bool) or agentid <= 0:
            raise InvalidConfigError(f"{where}.agentid must be the app's AgentId, a positive number")
    elif agentid is not None:
        raise InvalidConfigError(f"{where}: an official account has no agentid")
    aes_key = text("aes_key") or None
    modes = table.get("modes", list(MODES) if aes_key else ["plain"])
    if wecom:
        modes = table.get("modes", ["safe"])
    if not isinstance(modes, list) or not modes or not all(mode in MODES for mode in modes):
        raise InvalidConfigError(f"{where}.modes must be a list of plain, compat, safe")
    if wecom and set(modes) != {"safe"}:
        raise InvalidConfigError(f'{where}.modes: a WeCom app\'s messages are always encrypted: modes = ["safe"]')
    if not aes_key and set(modes) - {"plain"}:
        raise InvalidConfigError(f"{where}.aes_key is required for compat and safe mode")
    if settings.require_encryption:
        modes = [mode for mode in modes if mode != "plain"]
        if not modes:
            raise InvalidConfigError(f"{where}: WXRELAY_REQUIRE_ENCRYPTION is on and the account accepts only plain")
    late = table.get("late_replies", True)
    if not isinstance(late, bool):
        raise InvalidConfigError(f"{where}.late_replies must be true or false")
    late_path = text("late_path")
    if late_path not in ("", "api", "pickup"):
        raise InvalidConfigError(f"{where}.late_path must be api or pickup, not {late_path!r}")
    secret = text("secret") or None
    pickup_text = text("pickup_text", settings.pickup_text)
    if not pickup_text:
        raise InvalidConfigError(f"{where}.pickup_text must not be empty: WeChat shows no empty text")
    typing = table.get("typing", False)
    if typing is not False and (typing is not True or wecom or not secret):
        raise InvalidConfigError(f"{where}.typing must be true or false, and true needs an official account's secret")
    account = Account(
        name, kind, text("token"), aes_key, text("aes_key_previous") or None, appid,
        agentid if wecom else None, secret, text("bot", settings.bot) or settings.bot,
        frozenset(modes), late, _late_path(late_path, secret), pickup_text,
        text("redis_url") or settings.redis_url, f"{settings.queue}.{name}",
        settings.wecom_api_base if wecom else settings.api_base, typing,
    )  # fmt: skip
    _check_keys(account, lambda field: f"{where}.{field}")
    redis_tls.check(account.redis_url, f"{where}.redis_url")
    return account


def _late_path(chosen: str, secret: str | None) -> str:
    """Unless chosen, what the account can do: without its secret there is no API to send with."""
    return chosen or ("api" if secret else "pickup")


def _check_keys(account: Account, named: Any) -> None:
    if not account.token:
        raise InvalidConfigError(f"{named('token')} is not set")
    try:
        validate_token(account.token)
    except InvalidConfigError as exc:
        raise InvalidConfigError(f"{named('token')}: {exc}") from None
    for field in ("aes_key", "aes_key_previous"):
        key = getattr(account, field)
        if key is not None:
            try:
                decode_aes_key(key)
            except InvalidConfigError as exc:
                raise InvalidConfigError(f"{named(field)}: {exc}") from None
    if account.aes_key and not account.appid:
        appid = "WECHAT_APPID" if account.name == DEFAULT else f"accounts file: {account.name}.appid"
        raise InvalidConfigError(f"{appid} is required with an EncodingAESKey")


def _substitute(value: str, where: str, environ: Mapping[str, str]) -> str:
    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise InvalidConfigError(f"{where}: environment variable {name} is not set")
        return environ[name]

    return _VARIABLE.sub(variable, value)
