/**
 * The Lua scripts of the Redis limiter (redis.ts). Every check-and-change of a shared counter is
 * one of these, run atomically on the server (EVALSHA, loaded at start), never a read-modify-write
 * from Node: two instances admitting at the same moment see each other's places.
 *
 * Per key K (all of one key's data in one hash slot, `{K}`):
 *   rpm    sorted set   admission id → admission time: the last minute's requests
 *   lease  sorted set   admission id → lease expiry: requests in flight (expired ones don't count)
 *   res    hash         admission id → tokens strict mode reserved for it
 *   tok    hash         minute → billed tokens; 't' their total; 'c' the first minute from which
 *                       tok holds every billed token (memory.ts's coveredFrom); no tok = nothing
 *   min    sorted set   the minutes tok holds, oldest first
 *
 * Times come from the caller (ARGV), never from Redis TIME, so every instance and the contract
 * tests decide time the same way (instances' clocks must be roughly in sync: NTP).
 * Numbers returned to Node are integers (Redis truncates Lua numbers); all of ours are whole.
 */

/** Helpers every script starts with. */
const PRELUDE = `
local MINUTE = 60000

-- PEXPIRE that only ever lengthens a key's time to live (several instances set it).
local function extend(key, ms)
  local ttl = redis.call('PTTL', key)
  if ttl ~= -2 and ttl < ms then redis.call('PEXPIRE', key, ms) end
end

-- Drops the expired leases and their reservations.
local function prune_leases(lease, res, now)
  local gone = redis.call('ZRANGEBYSCORE', lease, '-inf', now)
  if #gone == 0 then return end
  redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)
  for i = 1, #gone, 1000 do
    redis.call('HDEL', res, unpack(gone, i, math.min(i + 999, #gone)))
  end
end

local function reserved_total(res)
  local vals = redis.call('HVALS', res)
  local sum = 0
  for i = 1, #vals do sum = sum + tonumber(vals[i]) end
  return sum
end

-- Drops the buckets wholly outside the window ending at now (a minute m leaves at
-- (m + 1) * MINUTE + window) and returns the tokens still inside (memory.ts TokenLedger.used).
local function budget_used(tok, min, now, window)
  local total = tonumber(redis.call('HGET', tok, 't') or '0')
  local cutoff = math.floor((now - window) / MINUTE) - 1
  local old = redis.call('ZRANGEBYSCORE', min, '-inf', cutoff)
  if #old == 0 then return total end
  local dropped = 0
  for i = 1, #old, 1000 do
    local j = math.min(i + 999, #old)
    local vals = redis.call('HMGET', tok, unpack(old, i, j))
    for k = 1, #vals do dropped = dropped + (tonumber(vals[k]) or 0) end
    redis.call('HDEL', tok, unpack(old, i, j))
  end
  redis.call('ZREMRANGEBYSCORE', min, '-inf', cutoff)
  redis.call('HINCRBY', tok, 't', -dropped)
  local covered = tonumber(redis.call('HGET', tok, 'c') or '0')
  local next_minute = tonumber(old[#old]) + 1
  if covered < next_minute then redis.call('HSET', tok, 'c', next_minute) end
  return total - dropped
end

-- When enough usage has left the window for it to fall to target or below
-- (memory.ts TokenLedger.freesAt); walks the oldest buckets only as far as needed.
local function frees_at(tok, min, total, now, window, target)
  local remaining = total
  if remaining <= target then return now end
  local start = 0
  while true do
    local minutes = redis.call('ZRANGE', min, start, start + 199)
    if #minutes == 0 then break end
    local tokens = redis.call('HMGET', tok, unpack(minutes))
    for i = 1, #minutes do
      remaining = remaining - (tonumber(tokens[i]) or 0)
      if remaining <= target then return (tonumber(minutes[i]) + 1) * MINUTE + window end
    end
    start = start + 200
  end
  return now + window
end

-- When the oldest counted tokens leave the window, or -1 with none.
local function oldest_expiry(min, window)
  local first = redis.call('ZRANGE', min, 0, 0)
  if #first == 0 then return -1 end
  return (tonumber(first[1]) + 1) * MINUTE + window
end

-- memory.ts Limits.checkBudget: nil when wanted more tokens fit, else the refusal
-- {1, used, reserved} (reservations in flight are in the way) or {2, used, frees_at}.
local function check_budget(tok, min, res, now, window, budget, wanted)
  local used = budget_used(tok, min, now, window)
  local reserved = 0
  local refused
  if wanted > 0 then
    reserved = reserved_total(res)
    refused = used + reserved + wanted > budget
  else
    refused = used >= budget
  end
  if not refused then return nil, used end
  if wanted > 0 and used + wanted <= budget then return {1, used, reserved}, used end
  return {2, used, frees_at(tok, min, used, now, window, budget - math.max(1, wanted))}, used
end
`;

/**
 * Admission: budget spent? → concurrency → rpm (memory.ts's order), then takes the place.
 * KEYS rpm, lease, res, tok, min
 * ARGV now, window ms, budget, check budget (1/0), reserve tokens, concurrent, rpm, admission id,
 *      lease expiry, lease key ttl ms
 * Returns {0, recent, rpm reset at, used, tokens' oldest expiry or -1} admitted;
 *         {1, used, reserved} / {2, used, frees at} budget; {3} concurrency; {4, reset at} rpm.
 */
export const ADMIT = `${PRELUDE}
local now, window, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local check, reserve = ARGV[4] == '1', tonumber(ARGV[5])
local concurrent, rpm, id = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local lease_expiry, lease_ttl = tonumber(ARGV[9]), tonumber(ARGV[10])

prune_leases(KEYS[2], KEYS[3], now)
local used
if check then
  local refusal
  refusal, used = check_budget(KEYS[4], KEYS[5], KEYS[3], now, window, budget, reserve)
  if refusal then return refusal end
else
  used = budget_used(KEYS[4], KEYS[5], now, window)
end

if redis.call('ZCARD', KEYS[2]) >= concurrent then return {3} end

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - MINUTE)
local recent = redis.call('ZCARD', KEYS[1])
if recent >= rpm then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #oldest == 0 then return {4, now + MINUTE} end
  return {4, tonumber(oldest[2]) + MINUTE}
end

redis.call('ZADD', KEYS[1], now, id)
redis.call('PEXPIRE', KEYS[1], MINUTE + 5000)
redis.call('ZADD', KEYS[2], lease_expiry, id)
extend(KEYS[2], lease_ttl)
if reserve > 0 then
  redis.call('HSET', KEYS[3], id, reserve)
  extend(KEYS[3], lease_ttl)
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, recent, tonumber(oldest[2]) + MINUTE, used, oldest_expiry(KEYS[5], window)}
`;

/**
 * Strict mode: reserves more tokens for an admission (used + reserved + wanted ≤ budget).
 * KEYS lease, res, tok, min
 * ARGV now, window ms, budget, wanted, admission id, lease expiry, lease key ttl ms
 * Returns {0} reserved, or the refusal of check_budget.
 */
export const RESERVE = `${PRELUDE}
local now, window, budget, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local id, lease_expiry, lease_ttl = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])

prune_leases(KEYS[1], KEYS[2], now)
local refusal = check_budget(KEYS[3], KEYS[4], KEYS[2], now, window, budget, wanted)
if refusal then return refusal end
-- The request is alive (it is reserving): a lease lost to an outage longer than its TTL is
-- taken again, so that the reservation is released with it should this instance die.
if not redis.call('ZSCORE', KEYS[1], id) then
  redis.call('ZADD', KEYS[1], lease_expiry, id)
  extend(KEYS[1], lease_ttl)
end
redis.call('HINCRBY', KEYS[2], id, wanted)
extend(KEYS[2], lease_ttl)
return {0}
`;

/**
 * The end of a request: frees its lease and reservation (both at most once: ZREM and HDEL of
 * what is gone do nothing) and bills its tokens into their minute.
 * KEYS lease, res, tok, min
 * ARGV admission id, tokens, minute, now, window ms, budget keys' ttl ms
 */
export const FINISH = `${PRELUDE}
local id, tokens, minute = ARGV[1], tonumber(ARGV[2]), ARGV[3]
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
if tokens > 0 then
  -- No tok: Redis held nothing of this key, so it holds every token from this minute on.
  redis.call('HSETNX', KEYS[3], 'c', minute)
  redis.call('HINCRBY', KEYS[3], minute, tokens)
  redis.call('HINCRBY', KEYS[3], 't', tokens)
  redis.call('ZADD', KEYS[4], minute, minute)
  budget_used(KEYS[3], KEYS[4], tonumber(ARGV[4]), tonumber(ARGV[5]))
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
end
return 1
`;

/**
 * The key's budget as /v1/key-status shows it.
 * KEYS tok, min; ARGV now, window ms, budget
 * Returns {used, resets at}: when exhausted, when requests are accepted again; otherwise when
 * the oldest counted tokens leave (now with none).
 */
export const BUDGET = `${PRELUDE}
local now, window, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local used = budget_used(KEYS[1], KEYS[2], now, window)
if budget - used > 0 then
  local oldest = oldest_expiry(KEYS[2], window)
  if oldest < 0 then oldest = now end
  return {used, oldest}
end
return {used, frees_at(KEYS[1], KEYS[2], used, now, window, budget - 1)}
`;

/**
 * Puts back usage read from the store that is older than what tok already holds (memory.ts
 * Limits.backfill), for load and restoreWindow: only minutes in [from, covered) are added, then
 * covered becomes from. Idempotent, also when instances do it at once.
 * KEYS tok, min; ARGV from minute, ttl ms, then minute, tokens pairs.
 * Returns the tokens added.
 */
export const ADD_OLDER = `${PRELUDE}
local c = redis.call('HGET', KEYS[1], 'c')
local covered = c and tonumber(c) or math.huge
local from = tonumber(ARGV[1])
if from >= covered then return 0 end
local added = 0
for i = 3, #ARGV - 1, 2 do
  local minute, tokens = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if minute >= from and minute < covered and tokens > 0 then
    redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[2], minute, ARGV[i])
    added = added + tokens
  end
end
redis.call('HINCRBY', KEYS[1], 't', added)
redis.call('HSET', KEYS[1], 'c', ARGV[1])
extend(KEYS[1], tonumber(ARGV[2]))
extend(KEYS[2], tonumber(ARGV[2]))
return added
`;

/**
 * Refreshes the leases of the admissions an instance holds for one key (those still there:
 * a finished or expired lease is not brought back).
 * KEYS lease, res; ARGV lease expiry, lease key ttl ms, admission ids...
 */
export const REFRESH = `${PRELUDE}
for i = 3, #ARGV do redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i]) end
extend(KEYS[1], tonumber(ARGV[2]))
extend(KEYS[2], tonumber(ARGV[2]))
return 1
`;

/**
 * Compare-and-set of the load marker: sets it to ARGV[2] (with a ttl of ARGV[3] ms when > 0; an
 * empty value deletes it) only if it still holds ARGV[1]. Returns 1 when it did.
 * KEYS marker
 */
export const SWAP_MARKER = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
elseif tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
`;
