-- wrk script of `make bench`: replays pre-generated, signed WeChat callbacks.
--
-- Each request in the file (written by bench/callbacks.py: a length line, then
-- the raw HTTP request) is sent once, so every message has its own MsgId.
-- Environment:
--   BENCH_REQUESTS  the request file (required)
--   BENCH_RATE      offered rate in requests/s; unset = closed loop (as fast
--                   as the connections are answered)
--   BENCH_EXPECT    a string every real reply contains; other 200 bodies are
--                   counted as bad replies, `success` as no reply
--   BENCH_OUT       where done() writes its figures as JSON
-- Use one wrk thread (-t1): the request file is not split between threads.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) * 1000000 + tonumber(timespec.tv_nsec) / 1000
end

local requests = {}
local total, sent = 0, 0
local expect = os.getenv("BENCH_EXPECT")

-- Globals: done() reads them from the thread with thread:get().
replies, no_reply, bad_reply, exhausted, late_slots = 0, 0, 0, 0, 0

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local path = os.getenv("BENCH_REQUESTS")
  local file = assert(io.open(path, "rb"), "cannot open BENCH_REQUESTS " .. tostring(path))
  local data = file:read("*a")
  file:close()
  local pos = 1
  while pos <= #data do
    local eol = string.find(data, "\n", pos, true)
    if not eol then break end
    local length = tonumber(string.sub(data, pos, eol - 1))
    requests[#requests + 1] = string.sub(data, eol + 1, eol + length)
    pos = eol + 1 + length
  end
  total = #requests
end

function request()
  sent = sent + 1
  if sent > total then
    -- Out of fresh requests: stop rather than repeat a MsgId. The harness
    -- sizes the file so this never happens, and reports it if it does.
    exhausted = 1
    wrk.thread:stop()
    return requests[total]
  end
  return requests[sent]
end

-- Open-loop pacing: every delay() call claims the next slot of a fixed
-- schedule, so requests go out at the offered rate whatever the latency, as
-- long as a connection is free. When none is, the slot is sent late and
-- counted; the harness then reports the point as saturated.
local rate = tonumber(os.getenv("BENCH_RATE") or "")
if rate and rate > 0 then
  local interval = 1000000 / rate
  local next_slot = nil
  function delay()
    local now = now_us()
    if next_slot == nil then next_slot = now end
    next_slot = next_slot + interval
    local wait = next_slot - now
    if wait < 0 then
      if wait < -interval then late_slots = late_slots + 1 end
      return 0
    end
    return math.floor(wait / 1000)
  end
end

function response(status, headers, body)
  if status ~= 200 then return end -- counted by wrk as a status error
  if body == "success" or body == "" then
    no_reply = no_reply + 1
  elseif expect and not string.find(body, expect, 1, true) then
    bad_reply = bad_reply + 1
  else
    replies = replies + 1
  end
end

local function number(value)
  if value ~= value or value == math.huge or value == -math.huge then return "null" end
  return string.format("%.3f", value)
end

function done(summary, latency, requests_stats)
  local counts = { replies = 0, no_reply = 0, bad_reply = 0, exhausted = 0, late_slots = 0 }
  for _, thread in ipairs(threads) do
    for name, _ in pairs(counts) do
      counts[name] = counts[name] + (thread:get(name) or 0)
    end
  end
  local fields = {
    string.format('"duration_us": %d', summary.duration),
    string.format('"requests": %d', summary.requests),
    string.format('"bytes": %d', summary.bytes),
    string.format('"errors_connect": %d', summary.errors.connect),
    string.format('"errors_read": %d', summary.errors.read),
    string.format('"errors_write": %d', summary.errors.write),
    string.format('"errors_status": %d', summary.errors.status),
    string.format('"errors_timeout": %d', summary.errors.timeout),
    string.format('"latency_min_us": %s', number(latency.min)),
    string.format('"latency_max_us": %s', number(latency.max)),
    string.format('"latency_mean_us": %s', number(latency.mean)),
  }
  for _, p in ipairs({ 50, 75, 90, 99, 99.9 }) do
    fields[#fields + 1] = string.format('"latency_p%s_us": %s', tostring(p), number(latency:percentile(p)))
  end
  for name, value in pairs(counts) do
    fields[#fields + 1] = string.format('"%s": %d', name, value)
  end
  local out = os.getenv("BENCH_OUT")
  if out then
    local file = assert(io.open(out, "w"))
    file:write("{" .. table.concat(fields, ", ") .. "}\n")
    file:close()
  end
end
