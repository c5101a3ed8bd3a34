"""The accounts one worker process runs the messages of, and the one Redis they share.

A Celery worker has one broker, so a worker process serves the accounts of
one Redis; accounts on other Redis servers get worker processes of their own
(the appliance starts one per Redis an account names). Within its Redis a
worker serves every account's queue unless WXRELAY_WORKER_ACCOUNTS pins it
to some.
"""

from __future__ import annotations

from dataclasses import dataclass

from common import accounts
from common.accounts import Account, Accounts
from common.settings import Settings
from wechat.exceptions import InvalidConfigError


@dataclass(frozen=True)
class Served:
    accounts: Accounts  # every account, for the late sends and sweeps of any of them
    names: tuple[str, ...]  # those whose messages this worker runs
    redis_url: str

    @property
    def queues(self) -> list[str]:
        return [self.accounts[name].queue for name in self.names]

    def account_of(self, ledger_key: str) -> Account | None:
        return self.accounts.of_key(ledger_key)


def served(settings: Settings) -> Served:
    everyone = accounts.load(settings)
    if settings.worker_accounts:
        unknown = [name for name in settings.worker_accounts if name not in everyone]
        if unknown:
            raise InvalidConfigError(f"WXRELAY_WORKER_ACCOUNTS: no account {unknown[0]!r}")
        names = settings.worker_accounts
        urls = {everyone[name].redis_url for name in names}
        if len(urls) > 1:
            raise InvalidConfigError(
                "WXRELAY_WORKER_ACCOUNTS: these accounts use different Redis servers; a worker serves one "
                "(run a worker for each)"
            )
        return Served(everyone, names, urls.pop())
    names = tuple(name for name, account in everyone.items() if account.redis_url == settings.redis_url)
    if not names:
        raise InvalidConfigError("no account uses WXRELAY_REDIS_URL: pin this worker with WXRELAY_WORKER_ACCOUNTS")
    return Served(everyone, names, settings.redis_url)
