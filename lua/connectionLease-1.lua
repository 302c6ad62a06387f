--[[
  Connection leases for one destination, shared by every gateway: a connection is opened only
  under a lease, so the destination's connection limit holds across gateways. Leases expire
  unless renewed, so a gateway that dies gives its connections back after the lease time.
  Runs on ONE node (the first node of redis.nodes that is up), like rateLimit. Time is the node's
  own (TIME), never a caller's: a gateway whose clock runs ahead cannot expire others' leases.

  KEYS: 1 the destination's lease set (sorted set: holder -> expiry ms on the node's clock)
  ARGV: 1 operation: "acquire", "renew" or "release",
        2 holder id, 3 lease ms (acquire, renew),
        4 connection limit (acquire only)
  Returns: acquire { 1, held } lease granted (held = leases now held, this one included)
                   { 0, held } limit reached, nothing changed but expired leases removed
           renew   { 1, held } extended; { 0, held } the lease had expired and is gone
           release { 1, held } (1 even when there was no such lease)
]]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local holder = ARGV[2]
local expiry = now + (tonumber(ARGV[3]) or 0)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)

local function keep()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2]))) end
end

if op == 'acquire' then
  local held = redis.call('ZCARD', KEYS[1])
  if redis.call('ZSCORE', KEYS[1], holder) then
    redis.call('ZADD', KEYS[1], expiry, holder)
    keep()
    return { 1, held }
  end
  if held >= tonumber(ARGV[4]) then return { 0, held } end
  redis.call('ZADD', KEYS[1], expiry, holder)
  keep()
  return { 1, held + 1 }
elseif op == 'renew' then
  redis.call('ZADD', KEYS[1], 'XX', expiry, holder)
  local present = redis.call('ZSCORE', KEYS[1], holder)
  keep()
  return { present and 1 or 0, redis.call('ZCARD', KEYS[1]) }
elseif op == 'release' then
  redis.call('ZREM', KEYS[1], holder)
  return { 1, redis.call('ZCARD', KEYS[1]) }
end
return redis.error_reply('connectionLease: unknown operation ' .. tostring(op))
