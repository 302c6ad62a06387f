--[[
  Dead destinations shared by every member (relay/dead.ts): per destination MTA a hash of its
  consecutive failures, the end of its dead time, the rounds dead in a row and the probe out, and
  one sorted set of the destinations dead now (destination -> end of its dead time). Times are
  the node's own (TIME); answers give time left, never a time, so a member whose clock runs ahead
  or behind reads the same wait. Run on every node of the pool; the caller merges the answers.

  KEYS: 1 the destination's hash (sg:dead:{<host:port>}), 2 the set of dead ones (sg:dead)
  ARGV: 1 operation: "fail", "success", "claim" (the one probe after the wait), "unclaim" or
        "list", 2 the destination, 3 failures that make it dead, 4 dead time ms (doubled per
        round, at most 8 times), 5 ms a probe claim lasts, 6 the claimer
  Returns: fail    { dead now (1/0), ms left dead, failures, rounds }
           success { 1 when it was dead (or had failures), else 0 }
           claim   { 1 granted (up, or the probe is this claimer's), 0 refused, ms left dead }
           unclaim { 1 }
           list    { dest1, ms left 1, dest2, ms left 2, ... } (at most 1,000; ms left <= 0: due a probe)
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, dest = ARGV[1], ARGV[2]
local suspend = tonumber(ARGV[4])
local keep = 16 * suspend

if op == 'list' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - keep)
  local rows = redis.call('ZRANGE', KEYS[2], 0, 999, 'WITHSCORES')
  local out = {}
  for i = 1, #rows, 2 do
    out[#out + 1] = rows[i]
    out[#out + 1] = tostring(tonumber(rows[i + 1]) - now)
  end
  return out
end

local h = redis.call('HMGET', KEYS[1], 'f', 'u', 'r', 'p', 'pe')
local failures, untilMs, rounds = tonumber(h[1] or '0'), tonumber(h[2] or '0'), tonumber(h[3] or '0')
local probing = h[4] and tonumber(h[5] or '0') > now

if op == 'success' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], dest)
  if failures > 0 or untilMs > 0 then return { 1 } end
  return { 0 }
end

if op == 'fail' then
  failures = failures + 1
  local dead = 0
  if h[4] or (untilMs == 0 and failures >= tonumber(ARGV[3])) then
    untilMs = now + suspend * math.min(8, 2 ^ rounds)
    rounds = rounds + 1
    dead = 1
    redis.call('HDEL', KEYS[1], 'p', 'pe')
    redis.call('ZADD', KEYS[2], untilMs, dest)
  end
  redis.call('HSET', KEYS[1], 'f', failures, 'u', untilMs, 'r', rounds)
  redis.call('PEXPIRE', KEYS[1], math.max(untilMs - now, 0) + keep)
  return { dead, math.max(untilMs - now, 0), failures, rounds }
end

if op == 'claim' then
  if untilMs == 0 or h[4] == ARGV[6] then return { 1, 0 } end
  if probing or now < untilMs then return { 0, math.max(untilMs - now, 0) } end
  redis.call('HSET', KEYS[1], 'p', ARGV[6], 'pe', now + tonumber(ARGV[5]))
  return { 1, 0 }
end

if op == 'unclaim' then
  if h[4] == ARGV[6] then redis.call('HDEL', KEYS[1], 'p', 'pe') end
  return { 1 }
end
return redis.error_reply('deadDestination: unknown operation ' .. tostring(op))
