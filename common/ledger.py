"""The message ledger: one Redis hash per message, shared by relays and workers.

It is what makes a message run once and its reply go out exactly once. Every
transition is a Lua script, so a relay and a worker racing over the same
message are serialised by Redis itself:

    pending ──complete──▶ done ──take──▶ taken          (passive reply)
       │                   │
       │                   └─sweep──▶ late               (customer-service API)
       └──abandon/sweep──▶ abandoned ──complete──▶ late  (customer-service API)

`late` always means: the worker that got there owns delivery through the
customer-service API; `taken` means a relay wrote the reply to WeChat. No
state leads from one to the other, so a reply can never take both paths.

The same script text serves the relay (redis.asyncio) and the worker (redis),
which is why it lives here and not in either of them.
"""

from __future__ import annotations

PREFIX = "wxrelay:"
REPLY_CHANNEL = PREFIX + "replies"
WORKERS_KEY = PREFIX + "workers"

PENDING, DONE, TAKEN, ABANDONED, LATE, MISSING = "pending", "done", "taken", "abandoned", "late", "missing"
# A message in these states has a reply for WeChat's next delivery.
REPLY_READY = (DONE, TAKEN)
# A message in these states has been (or will be) answered through the API.
GONE_LATE = (ABANDONED, LATE)


def record_key(dedupe_key: str) -> str:
    return f"{PREFIX}msg:{dedupe_key}"


def session_key(openid: str) -> str:
    return f"{PREFIX}session:{openid}"


def reply_notice(dedupe_key: str, reply: str) -> str:
    """What a worker publishes when a reply is ready: the key, a newline, the reply."""
    return f"{dedupe_key}\n{reply}"


def parse_reply_notice(data: str) -> tuple[str, str]:
    dedupe_key, _, reply = data.partition("\n")
    return dedupe_key, reply


# KEYS: record, queue. ARGV: ttl, task message.
# A new message is recorded and its task queued in one step: no relay crash
# can leave a claimed message without a task, or queue a task twice.
CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'deliveries', 1)
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('LPUSH', KEYS[2], ARGV[2])
  return {'new', 1, ''}
end
local deliveries = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
local found = redis.call('HMGET', KEYS[1], 'state', 'reply')
return {found[1], deliveries, found[2] or ''}
"""

# KEYS: record. A task may run unless its message already has a reply
# (a broker redelivery after the work was done).
START = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == false then return 'missing' end
return state
"""

# KEYS: record. ARGV: reply, customer-service payload, channel, notice.
COMPLETE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'pending' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'reply', ARGV[1], 'cs', ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 'done'
end
if state == 'abandoned' or state == false then
  if state == 'abandoned' then redis.call('HSET', KEYS[1], 'state', 'late') end
  return 'late'
end
return state
"""

# KEYS: record. A relay has written the reply to WeChat.
TAKE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' then redis.call('HSET', KEYS[1], 'state', 'taken') end
return state
"""

# KEYS: record. The last delivery is out of time: take the reply if it is
# there, else hand the message to the late path.
ABANDON = """
local found = redis.call('HMGET', KEYS[1], 'state', 'reply')
local state = found[1]
if state == 'done' or state == 'taken' then
  redis.call('HSET', KEYS[1], 'state', 'taken')
  return {'taken', found[2]}
end
if state == 'pending' then
  redis.call('HSET', KEYS[1], 'state', 'abandoned')
  return {'abandoned', ''}
end
return {state or 'missing', ''}
"""

# KEYS: record, queue. ARGV: sweep task message.
# A delivery ended with WeChat gone and no reply: queue one sweep for when
# the last delivery must have come, in case it never does.
SCHEDULE_SWEEP = """
if redis.call('HSETNX', KEYS[1], 'sweep', 1) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# KEYS: record. No delivery is left to carry the reply: it goes late.
# Returns the state before and, when the sweeper now owns delivery, the payload.
SWEEP = """
local found = redis.call('HMGET', KEYS[1], 'state', 'cs')
local state = found[1]
if state == 'done' then
  redis.call('HSET', KEYS[1], 'state', 'late')
  return {'done', found[2]}
end
if state == 'pending' then redis.call('HSET', KEYS[1], 'state', 'abandoned') end
return {state or 'missing', ''}
"""
