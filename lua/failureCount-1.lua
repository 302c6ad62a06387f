--[[
  Failures of one client (failed logins) within a sliding window, shared by every member: one
  sorted set per client and kind, member -> time of the failure (ms, the node's own clock).
  Run on every node of the pool; the caller takes the highest count of a majority of them.

  KEYS: 1 the client's set (sg:fail:{<kind>:<client>})
  ARGV: 1 operation: "add" (one more failure) or "count", 2 window ms,
        3 failures kept at most (the newest), 4 a unique id for this failure (add only)
  Returns: the failures within the window now
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if ARGV[1] == 'add' then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  local keep = tonumber(ARGV[3])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(keep + 1))
  redis.call('PEXPIRE', KEYS[1], window)
end
return redis.call('ZCARD', KEYS[1])
