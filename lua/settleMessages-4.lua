--[[
  Settles a batch of messages for good: delivered, bounced, expired, purged or withdrawn. The live
  entry and its state go; the event stays in the history stream. One transaction.

  KEYS: 1 live stream, 2 history stream, 3 meta hash, 4 state hash
  ARGV: 1-6 as in includes/queueWrite.lua, 7 count n,
        then n groups of 3: message id, outcome (delivered|bounced|expired|purged|withdrawn),
        details (JSON object: reply, mx, rcpts, actor, reason, ...)
  Returns: { 0, txn, code1, code2, ... } with per message code 0 settled, -2 no such live message
           { -6, epoch } the queue belongs to a newer owner (epoch): nothing changed
           { -1, nodeTxn } expected txn differs from the node's (nothing changed)
           { -5, txn, lastEntry, lastHist } a history id not above the queue's highest
]]
--@include "queueWrite"

local refused = refusal()
if refused then return refused end

local txn = bumpTxn(KEYS[3])
local nextHistId = histIds(ARGV[3])
local out = { 0, txn }
local gone = {}
for i = 0, tonumber(ARGV[7]) - 1 do
  local b = 8 + i * 3
  local msgId, outcome = ARGV[b], ARGV[b + 1]
  local raw = redis.call('HGET', KEYS[4], msgId)
  if raw then
    local st = cjson.decode(raw)
    redis.call('XDEL', KEYS[1], st.e)
    redis.call('HDEL', KEYS[4], msgId)
    redis.call('HINCRBY', KEYS[3], COUNTER[st.s], -1)
    redis.call('HINCRBY', KEYS[3], 'bytes', -st.b)
    redis.call('HINCRBY', KEYS[3], outcome, 1)
    gone[#gone + 1] = st.e
    addEvent(KEYS[2], nextHistId(), ARGV[4], outcome, msgId, txn, ARGV[2], ARGV[b + 2])
    out[#out + 1] = 0
  else
    out[#out + 1] = -2
  end
end
for _, e in ipairs(gone) do fixOldest(KEYS[1], KEYS[3], e) end
done()
return out
