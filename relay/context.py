"""What every handler of one relay process shares."""

from __future__ import annotations

import logging
from pathlib import Path

from common import accounts, ledger
from common.accounts import Accounts
from common.redaction import Redactor, secrets_of
from common.settings import Settings
from relay.dispatch import Dispatcher
from relay.last_minute import LastMinute
from relay.replay import Replayer
from relay.routes import Route, routes
from relay.shard import Shard
from relay.sources import SourceFilter
from relay.spool import Spool
from wechat.exceptions import InvalidConfigError

log = logging.getLogger("wxrelay.relay")


class Relay:
    def __init__(self, settings: Settings, served: Accounts, port: int, redactor: Redactor | None = None) -> None:
        self.settings = settings
        self._started = False
        self.shards: dict[str, Shard] = {}
        self.routes: dict[str, Route] = routes(served, self._shard)
        # The appliance's own Redis (WXRELAY_REDIS_URL): WeChat's addresses live there.
        self.client = self._shard(settings.redis_url).client
        self.spool = Spool(Path(settings.spool_dir) / f"relay-{port}.sqlite3")
        self.dispatcher = Dispatcher(self.spool, settings)
        self.replayer = Replayer(self.route_of, self.spool, self.dispatcher)
        self.sources = SourceFilter(settings, self.client)
        self.last_minute = LastMinute()
        self._redactor = redactor

    def _shard(self, url: str) -> Shard:
        """The shard of a Redis, made on first use (raises ValueError for a URL the relay cannot use)."""
        shard = self.shards.get(url)
        if shard is None:
            shard = self.shards[url] = Shard.create(url, self.settings)
            if self._started:
                shard.start()
        return shard

    def shards_in_use(self) -> list[Shard]:
        """The Redis servers the accounts use now (WXRELAY_REDIS_URL's only if one does)."""
        return list({id(route.shard): route.shard for route in self.routes.values()}.values())

    def route_of(self, ledger_key: str) -> Route | None:
        return self.routes.get(ledger.account_of(ledger_key))

    async def start(self) -> None:
        self._started = True
        for shard in self.shards.values():
            shard.start()
        self.replayer.start()
        await self.sources.start()
        self.last_minute.start()

    def reload(self) -> None:
        """Serve the accounts as the accounts file now lists them (SIGHUP).

        Deliveries in flight keep the route they started with; a bad file
        leaves the accounts as they were. A Redis no account names any more
        keeps its shard until the process ends: a delivery may still hold it."""
        try:
            # The env file again too: the accounts file's path, and the secrets it names by ${NAME}.
            served = accounts.load(Settings.from_env().validate())
            new = routes(served, self._shard)
        except (InvalidConfigError, ValueError) as exc:
            log.error("accounts not reloaded, still serving %s: %s", ", ".join(self.routes), exc)
            return
        if self._redactor is not None:
            self._redactor.add(secrets_of(self.settings, served))
        added, removed = sorted(set(new) - set(self.routes)), sorted(set(self.routes) - set(new))
        self.routes = new
        log.info(
            "accounts reloaded: serving %s (added: %s; removed: %s)",
            ", ".join(new), ", ".join(added) or "none", ", ".join(removed) or "none",
        )  # fmt: skip

    async def stop(self) -> None:
        self.last_minute.stop()
        self.sources.stop()
        await self.replayer.stop()
        for shard in self.shards.values():
            await shard.stop()
        self.spool.close()
