--[[
  Ownership epochs: a counter per pool node. A gateway that joins draws the next value on every
  node, takes the highest, and raises every node it reached to it, so that any later draw that
  reaches a majority of the nodes gets a higher one.

  KEYS: 1 the counter (sg:epoch)
  ARGV: 1 "draw" or "raise", 2 the value to raise to (raise only)
  Returns: draw: the counter after the increment; raise: the counter afterwards
]]
if ARGV[1] == 'draw' then return redis.call('INCR', KEYS[1]) end
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local to = tonumber(ARGV[2])
if cur < to then
  redis.call('SET', KEYS[1], to)
  return to
end
return cur
