"""Which account a callback URL is, and what the relay needs to serve it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common.accounts import Account, Accounts
from relay.shard import Shard
from wechat.crypto import MessageCrypto


@dataclass(frozen=True)
class Route:
    account: Account
    crypto: MessageCrypto | None
    shard: Shard

    @property
    def queue(self) -> str:
        return self.account.queue


def routes(accounts: Accounts, shard_of: Callable[[str], Shard]) -> dict[str, Route]:
    """Each account by its name (the URL's last segment), on the shard of its Redis."""
    return {name: Route(account, account.crypto(), shard_of(account.redis_url)) for name, account in accounts.items()}
