--[[
  Holds a message (it is not delivered until released) or releases it (ready at once).

  KEYS: 1 live stream, 2 history stream, 3 meta hash, 4 state hash
  ARGV: 1-6 as in includes/queueWrite.lua,
        7 message id, 8 "held" or "released", 9 details (JSON: actor, reason)
  Returns: { 0, txn }
           { -2, txn }  no such live message
           { -3, txn }  wrong state: holding an in-flight or held message, releasing one not held
           { -6, epoch } the queue belongs to a newer owner (epoch): nothing changed
           { -1, nodeTxn }
           { -5, txn, lastEntry, lastHist } a history id not above the queue's highest
]]
--@include "queueWrite"

local refused = refusal()
if refused then return refused end

local msgId = ARGV[7]
local raw = redis.call('HGET', KEYS[4], msgId)
if not raw then return { -2, bumpTxn(KEYS[3]) } end
local st = cjson.decode(raw)
local hold = ARGV[8] == 'held'
if (hold and (st.s == 'h' or st.s == 'f')) or (not hold and st.s ~= 'h') then
  return { -3, bumpTxn(KEYS[3]) }
end
local to = hold and 'h' or 'r'
redis.call('HINCRBY', KEYS[3], COUNTER[st.s], -1)
redis.call('HINCRBY', KEYS[3], COUNTER[to], 1)
st.s = to
if not hold then st.n = 0 end
redis.call('HSET', KEYS[4], msgId, cjson.encode(st))
local txn = bumpTxn(KEYS[3])
addEvent(KEYS[2], ARGV[3], ARGV[4], ARGV[8], msgId, txn, ARGV[2], ARGV[9])
done()
return { 0, txn }
