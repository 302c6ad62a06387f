--[[
  Connection leases for one destination, shared by every gateway: a connection is opened only
  under a lease, so the destination's connection limit holds across gateways. Leases expire
  unless renewed, so a gateway that dies gives its connections back after the lease time.
  Runs on every node of the pool (a majority decides), or on ONE node without a pool. Time is
  the node's own (TIME), never a caller's: a gateway whose clock runs ahead cannot expire others'
  leases.

  Fair share: a holder id is "<instance>:<n>", an instance being one gateway process. An instance
  refused a lease is recorded as wanting one (for WANT_MS). While other instances want leases,
  each instance may hold at most its share, ceil(limit / instances holding or wanting), and is
  refused beyond it; "share" tells an instance what it holds against its share, so that one that
  took every connection while alone gives the excess back (closes connections) once others have
  mail for the destination.

  KEYS: 1 the destination's lease set (sorted set: holder -> expiry ms on the node's clock),
        2 its wanting instances (sorted set: instance -> until ms)
  ARGV: 1 operation: "acquire", "renew", "release" or "share",
        2 holder id (acquire, renew, release) or instance (share), 3 lease ms (acquire, renew),
        4 connection limit (acquire, share)
  Returns: acquire { 1, held } lease granted (held = leases now held, this one included)
                   { 0, held } limit or share reached, nothing changed but expired entries
                   removed and this instance recorded as wanting
           renew   { 1, held } extended; { 0, held } the lease had expired and is gone
           release { 1, held } (1 even when there was no such lease)
           share   { mine, share } leases the instance holds, and its share (the limit while
                   no other instance wants)
]]
local WANT_MS = 2000
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + (tonumber(ARGV[3]) or 0)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)

local function keep()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2]))) end
end

local function instanceOf(holder)
  return string.match(holder, '^(.*):[^:]*$') or holder
end

-- what `instance` holds, and its share of `limit` among the instances holding or wanting leases
local function shareOf(instance, limit)
  local seen, n, mine, others = {}, 0, 0, false
  local function count(i)
    if seen[i] then return end
    seen[i] = true
    n = n + 1
    if i ~= instance then others = true end
  end
  for _, h in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local i = instanceOf(h)
    if i == instance then mine = mine + 1 end
    count(i)
  end
  for _, i in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do count(i) end
  count(instance)
  if not others then return mine, limit end
  return mine, math.ceil(limit / n)
end

if op == 'acquire' then
  local holder = ARGV[2]
  local limit = tonumber(ARGV[4])
  local held = redis.call('ZCARD', KEYS[1])
  if redis.call('ZSCORE', KEYS[1], holder) then
    redis.call('ZADD', KEYS[1], expiry, holder)
    keep()
    return { 1, held }
  end
  local instance = instanceOf(holder)
  local mine, share = shareOf(instance, limit)
  if held >= limit or mine >= share then
    redis.call('ZADD', KEYS[2], now + WANT_MS, instance)
    redis.call('PEXPIRE', KEYS[2], WANT_MS)
    return { 0, held }
  end
  redis.call('ZADD', KEYS[1], expiry, holder)
  keep()
  return { 1, held + 1 }
elseif op == 'renew' then
  redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[2])
  local present = redis.call('ZSCORE', KEYS[1], ARGV[2])
  keep()
  return { present and 1 or 0, redis.call('ZCARD', KEYS[1]) }
elseif op == 'release' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return { 1, redis.call('ZCARD', KEYS[1]) }
elseif op == 'share' then
  local mine, share = shareOf(ARGV[2], tonumber(ARGV[4]))
  return { mine, share }
end
return redis.error_reply('connectionLease: unknown operation ' .. tostring(op))
