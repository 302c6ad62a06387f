--[[
  Settles a message for good: delivered, bounced, expired, purged or withdrawn. The live entry and
  its state go; the event stays in the history stream.

  KEYS: 1 live stream, 2 history stream, 3 meta hash, 4 state hash
  ARGV: 1 expected txn, 2 now ms, 3 history id, 4 history max length,
        5 message id, 6 outcome (delivered|bounced|expired|purged|withdrawn),
        7 details (JSON object: reply, mx, rcpts, actor, reason, ...)
  Returns: { 0, txn }     settled
           { -2, txn }    no such live message (nothing but txn changed)
           { -1, nodeTxn }
]]
--@include "queueWrite"

local _, nodeTxn = checkTxn(KEYS[3], ARGV[1])
if _ == nil then return { -1, nodeTxn } end

local msgId = ARGV[5]
local raw = redis.call('HGET', KEYS[4], msgId)
if not raw then return { -2, bumpTxn(KEYS[3]) } end
local st = cjson.decode(raw)
redis.call('XDEL', KEYS[1], st.e)
redis.call('HDEL', KEYS[4], msgId)
redis.call('HINCRBY', KEYS[3], COUNTER[st.s], -1)
redis.call('HINCRBY', KEYS[3], 'bytes', -st.b)
redis.call('HINCRBY', KEYS[3], ARGV[6], 1)
fixOldest(KEYS[1], KEYS[3], st.e)
local txn = bumpTxn(KEYS[3])
addEvent(KEYS[2], ARGV[3], ARGV[4], ARGV[6], msgId, txn, ARGV[2], ARGV[7])
return { 0, txn }
