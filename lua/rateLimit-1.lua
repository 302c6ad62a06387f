--[[
  A message rate limiter shared by every gateway (GCRA: one "theoretical arrival time" per
  destination). Each call reserves the next free send slot for one message when that slot is
  no further ahead than the caller is willing to wait; the caller sleeps until its slot.
  Not a replicated queue write: it runs on ONE node (the first node of redis.nodes that is up),
  and every gateway picks the same one. Time is the node's own (TIME), never a caller's: a
  gateway whose clock is ahead cannot jump the slots, one whose clock is behind is not starved.

  KEYS: 1 the destination's limiter key (a string holding the next free slot, ms on the node's
          clock, fractional)
  ARGV: 1 interval ms between two messages (1000 / rate),
        2 the longest wait ms a reservation may have, 3 extra ms the key outlives its last slot
  Returns: { 1, waitMs }   reserved: send after waitMs (0 = now)
           { 0, retryMs }  not reserved: the next slot is further ahead than ARGV[3]; ask
                           again after retryMs
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local maxWait = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local wait = tat - now
if wait > maxWait then
  return { 0, math.ceil(wait - maxWait) }
end
redis.call('SET', KEYS[1], string.format('%.3f', tat + interval), 'PX', math.ceil(wait + interval + tonumber(ARGV[3])))
return { 1, math.floor(wait) }
