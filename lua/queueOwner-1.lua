--[[
  The pool's record of which member owns a queue name, kept on every node; an owner holds a name
  while a majority of the nodes say so (takeover.ts). A queue this member created has no record
  until someone claims it: its owner is the member whose placement names it.

  KEYS: 1 the owner key (sg:owner:{<queue name>})
  ARGV: 1 operation: "claim", "release" (undo a claim that did not reach a majority) or "drop"
        (the queue was deleted), 2 the claiming member's gateway id, 3 its epoch,
        4 the member it is taken from (claim only), 5 that member's last known epoch (claim only)
  A claim succeeds when there is no record, when the record is the claimer's own id, or when it is
  the record of the member it is taken from at an epoch no newer than the one the claimer saw lapse
  (a restarted process with that id holds a newer epoch, and keeps its queue).
  Returns: { 1, "" }            claimed (release, drop: done or nothing to do)
           { 0, "id|epoch" }    held by another owner: nothing changed
]]
local op, me, epoch = ARGV[1], ARGV[2], ARGV[3]
local cur = redis.call('GET', KEYS[1])
local id, held = nil, nil
if cur then id, held = string.match(cur, '^(.*)|(%d+)$') end
if op == 'release' then
  if cur == me .. '|' .. epoch then redis.call('DEL', KEYS[1]) end
  return { 1, '' }
end
if op == 'drop' then
  if id == me then redis.call('DEL', KEYS[1]) end
  return { 1, '' }
end
if cur and id ~= me and not (id == ARGV[4] and tonumber(held) <= tonumber(ARGV[5])) then
  return { 0, cur }
end
redis.call('SET', KEYS[1], me .. '|' .. epoch)
return { 1, '' }
