--[[
  Claims a queue for an owner: its epoch goes into the meta hash unless a newer owner's is there
  already. Run on every replica when a gateway takes a queue (at start, before loading it): from
  then on, writes of an older owner are refused on that replica (DESIGN, invariant 10). Not a
  queue transaction: the transaction number does not move.

  KEYS: 1 live stream, 2 history stream, 3 meta hash, 4 state hash
  ARGV: 1 the owner's epoch
  Returns: { 0, epoch }  claimed (or already this owner's)
           { -6, epoch } a newer owner holds the queue (its epoch): nothing changed
]]
local cur = tonumber(redis.call('HGET', KEYS[3], 'epoch') or '0')
local mine = tonumber(ARGV[1])
if cur > mine then return { -6, cur } end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[3], 'epoch', ARGV[1]) end
return { 0, mine }
