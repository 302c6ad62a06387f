--[[
  Trims a queue's history stream below an id: the history budget's oldest-first trim across
  queues. The caller never passes an id beyond the lifecycle events cursor of the queue, so no
  event a consumer has not been sent is trimmed (DESIGN, invariant 12). No message changes and no
  event is added; the transaction number moves, as for every write, so both replicas stay equal.

  KEYS: 1 live stream, 2 history stream, 3 meta hash, 4 state hash
  ARGV: 1-6 as in includes/queueWrite.lua (ARGV[3] is checked, not written), 7 the lowest id kept
        (XTRIM MINID: every event with a lower id goes)
  Returns: { 0, txn, trimmed }
           { -6, epoch } the queue belongs to a newer owner (epoch): nothing changed
           { -1, nodeTxn }
           { -5, txn, lastEntry, lastHist } a history id not above the queue's highest
]]
--@include "queueWrite"

local refused = refusal()
if refused then return refused end

local txn = bumpTxn(KEYS[3])
local trimmed = redis.call('XTRIM', KEYS[2], 'MINID', ARGV[7])
return { 0, txn, trimmed }
