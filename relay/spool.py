"""The relay's durable spool: messages Redis could not take, kept on disk until it can.

When Redis is down, restarting or full, a relay still answers WeChat in
time: it writes the message here (SQLite in WAL mode, each write synced to
disk before WeChat is answered), and replays it into the ledger when Redis
is back. A replay of a message another relay recorded meanwhile is a no-op
(the ledger's claim is atomic), so replaying is always safe.

One spool per relay process (its port names the file): SQLite serialises
writers, and a relay restarted by supervisor finds its own spool again.
SQLite is blocking, so every call runs on the spool's one thread, never on
the IOLoop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spooled (
    dedupe_key TEXT PRIMARY KEY,
    xml TEXT NOT NULL,
    answered INTEGER NOT NULL DEFAULT 0,
    spooled_at REAL NOT NULL
)
"""


@dataclass(frozen=True)
class Spooled:
    dedupe_key: str
    xml: str
    answered: bool  # its delivery was answered `success`: no delivery will come for it


class Spool:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wxrelay-spool")
        # Opened on the spool's thread: a connection stays on the thread that made it.
        self._db: sqlite3.Connection = self._thread.submit(self._open).result()
        self.depth = self._thread.submit(self._count).result()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a message is on disk before WeChat hears `success` for it.
        db.execute("PRAGMA synchronous=FULL")
        db.execute(_SCHEMA)
        self.path.chmod(0o600)  # messages are users' words
        return db

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM spooled").fetchone()[0])

    async def _run(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        def execute() -> list[tuple[Any, ...]]:
            rows = self._db.execute(sql, params).fetchall()
            self.depth = self._count()
            return rows

        return await asyncio.get_running_loop().run_in_executor(self._thread, execute)

    async def put(self, dedupe_key: str, xml: str) -> None:
        await self._run(
            "INSERT OR IGNORE INTO spooled (dedupe_key, xml, spooled_at) VALUES (?, ?, ?)", dedupe_key, xml, time.time()
        )

    async def mark_answered(self, dedupe_key: str) -> None:
        await self._run("UPDATE spooled SET answered = 1 WHERE dedupe_key = ?", dedupe_key)

    async def remove(self, dedupe_key: str) -> None:
        await self._run("DELETE FROM spooled WHERE dedupe_key = ?", dedupe_key)

    async def oldest(self, limit: int) -> list[Spooled]:
        rows = await self._run("SELECT dedupe_key, xml, answered FROM spooled ORDER BY spooled_at LIMIT ?", limit)
        return [Spooled(key, xml, bool(answered)) for key, xml, answered in rows]

    def close(self) -> None:
        self._thread.submit(self._db.close).result()
        self._thread.shutdown()
