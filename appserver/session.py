"""`msg.session`: a per-user dict kept in Redis as JSON, for conversational bots."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, MutableMapping
from typing import Any

import redis
from redis.exceptions import LockError

from common.accounts import DEFAULT
from common.ledger import session_key

log = logging.getLogger("wxrelay.appserver")

# How often a handler waiting for a user's session tries the lock again.
LOCK_POLL = 0.02

# Writes the session (or deletes it when emptied) and frees the lock, only
# while the lock is still ours: once it has expired another handler may have
# loaded the session, and writing over its update would lose it.
_SAVE_AND_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
if ARGV[2] == '' then
    redis.call('DEL', KEYS[2])
else
    redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
end
redis.call('DEL', KEYS[1])
return 1
"""


class SessionError(RuntimeError):
    """`msg.session` cannot be used safely: the handler must not go on."""


class SessionBusy(SessionError):
    """Another message's handler held the user's session for too long."""


class SessionLockLost(SessionError):
    """The session's lock expired before the handler finished: its update is dropped."""


class SessionClosed(SessionError):
    """The session was used after its handler had finished."""


def lock_key(openid: str, account: str = DEFAULT) -> str:
    return session_key(openid, account) + ":lock"


class Session(MutableMapping[str, Any]):
    """Loaded on first use and saved after the handler if it changed, so a
    bot that never touches its sessions costs no Redis round trip.

    The first use also takes the user's session lock, held until `save()` or
    `release()`, so that two messages from one user handled at once update
    the session one after the other instead of the second overwriting the
    first. A lock rather than WATCH/MULTI: an optimistic transaction retries
    on conflict, and a handler cannot be run again, it has side effects
    (replies, API calls). The lock expires after `lock_ttl` seconds (the
    task's hard time limit), so a worker killed while holding it delays the
    user's next message, never blocks it for good; a handler waits at most
    `lock_wait` seconds from the session's creation for it, then fails.
    """

    def __init__(
        self,
        client: redis.Redis,
        openid: str,
        ttl: int,
        lock_ttl: float = 90.0,
        lock_wait: float = 60.0,
        account: str = DEFAULT,
    ) -> None:
        self._client = client
        self._openid = openid
        # Within its account: OpenIDs are per account, but nothing stops two accounts' users from colliding.
        self._key = session_key(openid, account)
        self._lock_key = lock_key(openid, account)
        self._ttl = ttl
        self._lock_ttl = lock_ttl
        self._wait_deadline = time.monotonic() + lock_wait
        self._data: dict[str, Any] | None = None
        self._loaded_json = ""
        self._lock: Any = None  # redis.lock.Lock once held
        self._token = ""
        self._closed = False
        # A handler may hand msg.session to threads of its own: one load, one lock.
        self._guard = threading.Lock()

    def _load(self) -> dict[str, Any]:
        if self._closed:
            raise SessionClosed(f"msg.session of {self._openid} used after its handler finished")
        if self._data is not None:
            return self._data
        with self._guard:
            if self._closed:
                raise SessionClosed(f"msg.session of {self._openid} used after its handler finished")
            if self._data is None:
                self._acquire()
                try:
                    raw = self._client.get(self._key)
                except BaseException:
                    self._release_lock()
                    raise
                self._loaded_json = raw.decode() if raw else "{}"
                self._data = json.loads(self._loaded_json)
        return self._data

    def _acquire(self) -> None:
        lock = self._client.lock(self._lock_key, timeout=self._lock_ttl, sleep=LOCK_POLL, thread_local=False)
        token = uuid.uuid4().hex
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            on_loop = False
        else:
            on_loop = True
        if on_loop:
            # An async handler runs on the process's one handler loop: waiting
            # there would stall every async handler, the lock's holder too.
            acquired = lock.acquire(blocking=False, token=token)
        else:
            acquired = lock.acquire(blocking_timeout=max(0.0, self._wait_deadline - time.monotonic()), token=token)
        if not acquired:
            waited = "could not wait (async handler)" if on_loop else "gave up waiting at the time limit"
            # The handler may catch SessionBusy and answer anyway (appserver/examples/ai_chat.py): say what
            # happened to the session, not to the message.
            message = f"msg.session of {self._openid} is held by another message's handler: {waited}"
            log.warning(message)
            raise SessionBusy(message)
        self._lock, self._token = lock, token

    def __getitem__(self, name: str) -> Any:
        return self._load()[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._load()[name] = value

    def __delitem__(self, name: str) -> None:
        del self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def save(self) -> None:
        """Write the session if it changed, and release its lock."""
        with self._guard:
            self._closed = True
            if self._data is None or self._lock is None:
                return
            # Comparing the JSON also catches changes inside nested values.
            current = json.dumps(self._data, ensure_ascii=False, sort_keys=True)
            if current == json.dumps(json.loads(self._loaded_json), ensure_ascii=False, sort_keys=True):
                self._release_lock()
                return
            self._lock = None
            script = self._client.register_script(_SAVE_AND_RELEASE)
            keys = [self._lock_key, self._key]
            saved = script(keys=keys, args=[self._token, current if self._data else "", self._ttl])
            if not saved:
                message = (
                    f"msg.session of {self._openid}: its lock expired after {self._lock_ttl:g} s, before the handler"
                    " finished; the update is not saved"
                )
                log.error(message)
                raise SessionLockLost(message)

    def release(self) -> None:
        """Release the lock without saving (the handler failed); a no-op after `save()`."""
        with self._guard:
            self._closed = True
            if self._lock is not None:
                self._release_lock()

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        try:
            lock.release()
        except LockError:
            log.warning("msg.session of %s: its lock had expired before the handler finished", self._key)
        except redis.RedisError as exc:
            # Left to expire: the user's next message waits for it at most lock_ttl.
            log.warning("msg.session of %s: could not release its lock (%s)", self._key, exc)
