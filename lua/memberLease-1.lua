--[[
  A gateway's membership lease on one node of the pool: one key per gateway id, holding the
  token of the process that holds it. The lease lapses on the node's own clock (PX), never on the
  caller's, so a member whose clock runs ahead cannot end another's lease. A member holds its id
  while a majority of the pool's nodes say so.

  KEYS: 1 the member key (sg:member:{<gateway id>})
  ARGV: 1 operation: "acquire", "renew", "take" (a lease whose holder stopped renewing) or
        "release", 2 token, 3 lease ms
  Returns: { 1, ttlMs }             held by this token now
           { 2, ttlMs }             renew of a lease that had lapsed on this node (or that a
                                    restarted node lost): held again, but others may have adopted
                                    the member's queues meanwhile
           { 0, ttlMs, holder }     held by another token (nothing changed)
           release: { 1, 0 }
]]
local op, token, ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local holder = redis.call('GET', KEYS[1])
if op == 'release' then
  if holder == token then redis.call('DEL', KEYS[1]) end
  return { 1, 0 }
end
if holder and holder ~= token and op ~= 'take' then
  return { 0, redis.call('PTTL', KEYS[1]), holder }
end
-- acquire with no holder, renew (also of a key that lapsed or a restarted node lost), or take
redis.call('SET', KEYS[1], token, 'PX', ms)
if op == 'renew' and not holder then return { 2, ms } end
return { 1, ms }
