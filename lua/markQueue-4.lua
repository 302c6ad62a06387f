--[[
  A queue-level record: the write set after a replica left it, or an operator's action on the
  queue (a forced recovery, a flush, ...), as one event in the history with its actor and reason;
  or such a record about one message (ARGV[9], e.g. a purge undone). No message changes.

  KEYS: 1 live stream, 2 history stream, 3 meta hash, 4 state hash
  ARGV: 1-6 as in includes/queueWrite.lua, 7 event kind, 8 details (JSON),
        9 message id (a record about one message only)
  Returns: { 0, txn }
           { -6, epoch } the queue belongs to a newer owner (epoch): nothing changed
           { -1, nodeTxn }
           { -5, txn, lastEntry, lastHist } a history id not above the queue's highest
]]
--@include "queueWrite"

local refused = refusal()
if refused then return refused end

local txn = bumpTxn(KEYS[3])
addEvent(KEYS[2], ARGV[3], ARGV[4], ARGV[7], ARGV[9] or '', txn, ARGV[2], ARGV[8])
done()
return { 0, txn }
