"""The message ledger: one Redis hash per message, shared by relays and workers.

It is what makes a message run once and its reply go out exactly once. Every
transition is a Lua script, so a relay and a worker racing over the same
message are serialised by Redis itself:

    pending ──complete──▶ done ──take──▶ taken                      (passive reply)
       │                   │
       │                   └──due──▶ late ──begin──▶ sending ──▶ sent | refused | failed
       └──abandon/due──▶ abandoned ──complete──▶ late               (customer-service API)

`taken` means a relay wrote the reply to WeChat; `late` means the reply is
owed by the late path: the customer-service API, or, for an account with the
`pickup` path (or refused the API for want of permission), `kept` in the user's pickup
list for the passive reply to their next message; and only the one task that moves it
to `sending` may send it. No state leads from `taken` to `late` or back, so
a reply can never take both paths, and no state leads out of `sending` but
the outcome of that one send, so a redelivered task can never send again.
A handler that returned no reply ends `silent` instead of `late`.

Nothing waits on a process staying alive. Every claimed message is also
entered in the due set (a sorted set of when to look at it next): after
WeChat's last delivery must have ended, the sweep hands a reply nobody took
to the late path and re-offers a late reply whose task was lost, so a relay
or worker killed at any point delays a reply, never drops it.

Records live `dedupe_ttl` while their message runs; once settled (taken,
sent, refused, silent) only as long as WeChat may still retry.

The same script text serves the relay (redis.asyncio) and the worker (redis),
which is why it lives here and not in either of them. Scripts read the time
from Redis itself, so hosts with skewed clocks agree on what is due.
"""

from __future__ import annotations

PREFIX = "wxrelay:"
RECORD_PREFIX = PREFIX + "msg:"
REPLY_CHANNEL = PREFIX + "replies"
WORKERS_KEY = PREFIX + "workers"
DUE_KEY = PREFIX + "due"

PENDING, DONE, TAKEN, ABANDONED, LATE, MISSING = "pending", "done", "taken", "abandoned", "late", "missing"
SENDING, SENT, REFUSED, FAILED, SILENT, KEPT = "sending", "sent", "refused", "failed", "silent", "kept"
# CLAIM's answer to a plaintext signature already used with another body (relay/seen_signatures.py).
SIGNATURE_REUSED = "signature-reused"
# COMPLETE's answer when the user has replies kept for pickup: the caller adds them to this reply (PICKUP).
PICKUP = "pickup"
# A message in these states has a reply for WeChat's next delivery.
REPLY_READY = (DONE, TAKEN)
# After the first delivery: a late path owns this message, answer `success`.
GONE_LATE = (ABANDONED, LATE, SENDING, SENT, REFUSED, FAILED, SILENT, KEPT)
# A redelivered task may run the handler only while no reply was stored.
MAY_RUN = (PENDING, ABANDONED, MISSING)
# How long a reply owed late may wait for its task before the sweep offers
# it again (a worker killed between storing it and queueing the send).
LATE_LEASE = 10
# kombu looks for expired leases every 2 s (appserver/app.py); past a lease by
# this much, an unacknowledged message is back on the queue.
RESTORE_MARGIN = 5
# How often the sweep looks again at a message whose handler has not stored a
# reply yet: a worker that dies between taking the task from the queue and
# recording it as unacknowledged loses it (kombu writes the two apart), and
# then only the ledger, which kept the task, can queue it again.
RECHECK = 20
# How many of a queue's oldest tasks the sweep may read to find one (see SWEEP_DUE).
QUEUE_SCAN = 1000
# The header in which a relay (or a worker queueing a late send) writes when it queued a task (Unix time, s).
QUEUED_AT = "wxrelay_queued_at"
# How long a task found neither queued nor held stays suspect before it is queued again.
SUSPECT = 3


# The account `default` keeps the keys it had before there were accounts, so
# an upgrade leaves its messages in flight and its users' sessions where they are.
_DEFAULT_ACCOUNT = "default"


def message_key(account: str, wechat_key: str) -> str:
    """A message's key in the ledger: WeChat's dedupe key, within its account."""
    return wechat_key if account == _DEFAULT_ACCOUNT else f"{account}/{wechat_key}"


def account_of(key: str) -> str:
    """The account of a ledger key. WeChat's keys begin `msg:` or `event:`; an account name holds no colon."""
    account, slash, _ = key.partition("/")
    return account if slash and ":" not in account else _DEFAULT_ACCOUNT


def record_key(dedupe_key: str) -> str:
    return RECORD_PREFIX + dedupe_key


def session_key(openid: str, account: str = _DEFAULT_ACCOUNT) -> str:
    return f"{PREFIX}session:{message_key(account, openid)}"


def pickup_key(account: str, openid: str) -> str:
    """The replies kept for a user's next message, oldest first (`pickup` late path)."""
    return f"{PREFIX}pickup:{message_key(account, openid)}"


def stats_key(account: str) -> str:
    """Counts of late sends (and their failures) of one account."""
    return PREFIX + "stats" if account == _DEFAULT_ACCOUNT else f"{PREFIX}stats:{account}"


def relay_channel(relay_id: str) -> str:
    """The reply channel of one relay process (each also listens on REPLY_CHANNEL)."""
    return f"{REPLY_CHANNEL}:{relay_id}"


def reply_notice(dedupe_key: str, reply: str) -> str:
    """What a worker publishes when a reply is ready: the key, a newline, the reply."""
    return f"{dedupe_key}\n{reply}"


def parse_reply_notice(data: str) -> tuple[str, str]:
    dedupe_key, _, reply = data.partition("\n")
    return dedupe_key, reply


def due_after(deliveries: int, wechat_timeout: float) -> float:
    """From the first delivery, when WeChat's last one has surely ended."""
    return deliveries * wechat_timeout + 1.0


def settle_ttl(deliveries: int, wechat_timeout: float, lease: int) -> int:
    """How long a settled record still dedupes: WeChat's whole retry window, and
    longer than a task whose ack was lost (Redis blipped) takes to come back
    from kombu (a lease and its restore scan), so that it finds its answer."""
    return int(max(deliveries * wechat_timeout, lease + RESTORE_MARGIN)) + 5


def _with_constants(source: str) -> str:
    """A script with this module's constants written in where it says $NAME."""
    constants = {
        "LATE_LEASE": LATE_LEASE, "RECHECK": RECHECK, "SUSPECT": SUSPECT, "QUEUE_SCAN": QUEUE_SCAN,
        "SIGNATURE_REUSED": SIGNATURE_REUSED, "QUEUED_AT": QUEUED_AT,
    }  # fmt: skip
    for name, value in constants.items():
        source = source.replace("$" + name, str(value))
    return source


_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"

# KEYS: record, queue, due. ARGV: ttl, task message, due after (s), answered, dedupe key, delivery tag,
# and optionally the reply channel of the relay holding this delivery.
# The record keeps its task (and its account's queue) until a reply is stored, for the sweep to queue
# again should it be lost. It names the reply channel of the relay holding the latest delivery, so the
# notice goes to that relay alone (every relay reading every notice cost each one its share of them all).
# A new message is recorded, its task queued and its due time set in one
# step: no relay crash can leave a claimed message without a task, or queue a
# task twice. A retry counts its delivery and takes a reply that is ready.
# `answered` = 1 replays a message a relay spooled and answered `success`:
# no delivery will come for it, so it starts abandoned (its reply goes late).
# A plaintext delivery adds KEYS[4], its signature's key, and ARGV[8..9], its body's hash and how long
# to remember it: a signature seen with another body claims nothing (relay/seen_signatures.py). In the
# claim, it costs no round trip of its own.
CLAIM = _with_constants(
    _NOW
    + """
if KEYS[4] and not redis.call('SET', KEYS[4], ARGV[8], 'NX', 'EX', ARGV[9])
    and redis.call('GET', KEYS[4]) ~= ARGV[8] then
  return {'$SIGNATURE_REUSED', 0, ''}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  local state = 'pending'
  if ARGV[4] == '1' then state = 'abandoned' end
  redis.call('HSET', KEYS[1], 'state', state, 'deliveries', 1, 'task', ARGV[2], 'tag', ARGV[6], 'queue', KEYS[2])
  if ARGV[7] then redis.call('HSET', KEYS[1], 'reply_to', ARGV[7]) end
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('LPUSH', KEYS[2], ARGV[2])
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[5])
  return {'new', 1, ''}
end
if ARGV[4] == '1' then return {'replayed', 0, ''} end
if ARGV[7] then redis.call('HSET', KEYS[1], 'reply_to', ARGV[7]) end
local deliveries = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
local found = redis.call('HMGET', KEYS[1], 'state', 'reply')
return {found[1], deliveries, found[2] or ''}
"""
)

# KEYS: record. A redelivered task may run unless its message already has a reply.
START = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == false then return 'missing' end
return state
"""

# KEYS: record, due, the user's pickup list. ARGV: reply, customer-service payload, channel, notice, ttl,
# dedupe key. The notice goes to the channel the record names (its relay's), else to ARGV's (every relay's).
# Returns `done` (a delivery may take it), `late` (the caller owns the late
# send and must queue it), `silent`, `pickup` (a delivery waits and the user
# has replies kept: nothing is stored, the caller adds them to this reply and
# stores it with PICKUP), or `already:<state>` when another run of the same
# message got here first: that run owns the reply.
COMPLETE = _with_constants(
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'pending' and redis.call('EXISTS', KEYS[3]) == 1 then return 'pickup' end
if state == 'pending' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'reply', ARGV[1], 'cs', ARGV[2])
  redis.call('HDEL', KEYS[1], 'task', 'tag')
  redis.call('PUBLISH', redis.call('HGET', KEYS[1], 'reply_to') or ARGV[3], ARGV[4])
  return 'done'
end
if state == 'abandoned' or state == false then
  redis.call('HDEL', KEYS[1], 'task', 'tag')
  if ARGV[2] == '' then
    redis.call('HSET', KEYS[1], 'state', 'silent')
    redis.call('ZREM', KEYS[2], ARGV[6])
    return 'silent'
  end
  redis.call('HSET', KEYS[1], 'state', 'late', 'cs', ARGV[2])
  -- A missing record (expired while its handler ran) becomes a tombstone,
  -- so a second run of the message finds it and sends nothing.
  if state == false then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
  redis.call('ZADD', KEYS[2], now + $LATE_LEASE, ARGV[6])
  return 'late'
end
return 'already:' .. state
"""
)

# KEYS: record, due, the user's pickup list. ARGV: reply (with the kept replies it carries), its
# customer-service payload, channel, notice, ttl, dedupe key, pickup ttl, then the first entries of the
# list that reply carries, and an entry to keep for this message's own reply when it did not fit in.
# COMPLETE for a user with replies kept: in one step they leave the list and
# go out in this message's reply — only if they are still the first entries
# (a concurrent message of the same user may have taken them: `retry`) and a
# delivery still waits. Otherwise it is COMPLETE for this message's reply
# alone, and the kept replies wait for the next message.
PICKUP_COMPLETE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'pending' then return 'not-pending' end
local carried = #ARGV - 8
if carried > 0 then
  local head = redis.call('LRANGE', KEYS[3], 0, carried - 1)
  if #head ~= carried then return 'retry' end
  for i = 1, carried do
    if head[i] ~= ARGV[7 + i] then return 'retry' end
  end
  redis.call('LTRIM', KEYS[3], carried, -1)
  -- Should no delivery take it after all, the late path keeps it first in line (it holds the oldest).
  redis.call('HSET', KEYS[1], 'front', 1)
end
if ARGV[#ARGV] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[#ARGV])
  redis.call('EXPIRE', KEYS[3], ARGV[7])
end
redis.call('HSET', KEYS[1], 'state', 'done', 'reply', ARGV[1], 'cs', ARGV[2])
redis.call('HDEL', KEYS[1], 'task', 'tag')
redis.call('PUBLISH', redis.call('HGET', KEYS[1], 'reply_to') or ARGV[3], ARGV[4])
return 'done'
"""

# KEYS: record, due. ARGV: settled ttl, dedupe key. A relay is about to write
# the reply to WeChat: only a reply still `done` (or already taken by an
# earlier delivery of the same message) may be written.
TAKE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' then
  redis.call('HSET', KEYS[1], 'state', 'taken')
  redis.call('HDEL', KEYS[1], 'cs')
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
end
return state or 'missing'
"""

# KEYS: record, due. ARGV: settled ttl, dedupe key. The last delivery is out
# of time: take the reply if it is there, else hand the message to the late path.
ABANDON = """
local found = redis.call('HMGET', KEYS[1], 'state', 'reply')
local state = found[1]
if state == 'done' or state == 'taken' then
  redis.call('HSET', KEYS[1], 'state', 'taken')
  redis.call('HDEL', KEYS[1], 'cs')
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return {'taken', found[2]}
end
if state == 'pending' then
  redis.call('HSET', KEYS[1], 'state', 'abandoned')
  return {'abandoned', ''}
end
return {state or 'missing', ''}
"""

# KEYS: due. ARGV: record prefix, how many, settled ttl, queue of records naming none, unacked hash.
# The sweep: what is due and still owed. A reply no delivery took goes late;
# a late reply whose task has not begun is offered again; a message still
# without a reply is abandoned (its reply will go late when it completes) and
# looked at again every RECHECK seconds. If its task is neither held by a
# worker (unacknowledged, by its delivery tag) nor queued on its account's
# queue, it is suspect; still so SUSPECT seconds later (a live worker records
# a task it took within milliseconds), it was lost with a dying worker and is
# queued again, at the front of the line. Returns the keys whose late send
# the caller must queue. (Records are addressed by prefix, not passed as KEYS:
# the set's members are only known in here.)
#
# Whether a task is queued costs no read of a long queue. Tasks are pushed on
# the left and taken from the right, and whatever goes back (kombu's restore,
# a reject, this sweep) goes back on the right: so every task beyond the
# oldest QUEUE_SCAN was queued after them (unless more than QUEUE_SCAN went
# back at once). A task queued before the first of
# those (by the time written in it) is among the oldest QUEUE_SCAN if it is
# anywhere: found there by its exact text (LPOS), or, rewritten by kombu when
# it gave it back, by its tag. One queued after may be beyond: taken for
# queued. A task lost is one its worker took from the right end, when every
# task left was queued after it: found at the first look, however long the
# queue. Clocks that disagree (relays on several hosts) can only delay that.
SWEEP_DUE = _with_constants(
    _NOW
    + """
local owed = {}
local after, oldest = {}, {}
local function queued_at(task)
  return tonumber(string.match(task, '"$QUEUED_AT": ([%d.]+)'))
end
-- When the first task beyond the queue's oldest QUEUE_SCAN was queued: 0 if there is none, -1 if it does not say.
local function beyond(queue)
  if after[queue] == nil then
    local task = redis.call('LINDEX', queue, -$QUEUE_SCAN - 1)
    after[queue] = task and (queued_at(task) or -1) or 0
  end
  return after[queue]
end
local function queued(queue, task, tag)
  local first = beyond(queue)
  if first ~= 0 then
    local mine = queued_at(task)
    if first == -1 or not mine or mine >= first then return true end
  end
  if redis.call('LPOS', queue, task, 'RANK', -1, 'MAXLEN', $QUEUE_SCAN) then return true end
  if oldest[queue] == nil then oldest[queue] = redis.call('LRANGE', queue, -$QUEUE_SCAN, -1) end
  for _, other in ipairs(oldest[queue]) do
    if string.find(other, tag, 1, true) then return true end
  end
  return false
end
for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))) do
  local record = ARGV[1] .. key
  local found = redis.call('HMGET', record, 'state', 'cs', 'task', 'tag', 'suspect', 'queue')
  local state = found[1]
  local queue = found[6] or ARGV[4]
  if state == 'done' and (found[2] == false or found[2] == '') then
    redis.call('HSET', record, 'state', 'silent')
    redis.call('EXPIRE', record, ARGV[3])
    redis.call('ZREM', KEYS[1], key)
  elseif state == 'done' or state == 'late' then
    redis.call('HSET', record, 'state', 'late')
    redis.call('ZADD', KEYS[1], now + $LATE_LEASE, key)
    table.insert(owed, key)
  elseif state == 'pending' or state == 'abandoned' then
    redis.call('HSET', record, 'state', 'abandoned')
    local again = now + $RECHECK
    if found[3] and redis.call('HEXISTS', ARGV[5], found[4]) == 0 and not queued(queue, found[3], found[4]) then
      if found[5] then
        redis.call('RPUSH', queue, found[3])
        after[queue], oldest[queue] = nil, nil
        redis.call('HDEL', record, 'suspect')
      else
        redis.call('HSET', record, 'suspect', 1)
        again = now + $SUSPECT
      end
    elseif found[5] then
      redis.call('HDEL', record, 'suspect')
    end
    redis.call('ZADD', KEYS[1], again, key)
  else
    redis.call('ZREM', KEYS[1], key)
  end
end
return owed
"""
)

# KEYS: record, due. ARGV: dedupe key. The one late send of a message
# begins: returns the state before and, when this caller now owns the send,
# its payload. Any other state means another task sent it, or is sending it.
BEGIN_SEND = """
local found = redis.call('HMGET', KEYS[1], 'state', 'cs')
if found[1] == 'late' then
  redis.call('HSET', KEYS[1], 'state', 'sending')
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'late', found[2] or ''}
end
return {found[1] or 'missing', ''}
"""

# KEYS: record, due, the user's pickup list. ARGV: pickup ttl, settled ttl, dedupe key.
# The late path of the `pickup` accounts, and of a send the API refused for
# want of permission (48001, 76022; from `sending`): the reply is kept for the
# user's next message instead, once — only a reply still owed is kept.
KEEP = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'late' and state ~= 'sending' then return state or 'missing' end
local found = redis.call('HMGET', KEYS[1], 'cs', 'front')
if found[2] then
  redis.call('LPUSH', KEYS[3], found[1])
else
  redis.call('RPUSH', KEYS[3], found[1])
end
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'kept')
redis.call('HDEL', KEYS[1], 'cs', 'reply')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
return 'kept'
"""

# KEYS: record, due. ARGV: outcome (sent | refused | failed | retry), errcode,
# retry delay (s), settled ttl, dedupe key.
# `retry` gives the send back to `late` and sets when the sweep may offer it
# again should the retry's task be lost; the others settle the record.
END_SEND = _with_constants(
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'state') ~= 'sending' then return 0 end
if ARGV[1] == 'retry' then
  redis.call('HSET', KEYS[1], 'state', 'late', 'errcode', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]) + $LATE_LEASE, ARGV[5])
  return 1
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'errcode', ARGV[2])
redis.call('HDEL', KEYS[1], 'cs', 'reply')
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""
)
