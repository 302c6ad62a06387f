--[[
  Holds a message (it is not delivered until released) or releases it (ready at once).

  KEYS: 1 live stream, 2 history stream, 3 meta hash, 4 state hash
  ARGV: 1-5 as in includes/queueWrite.lua,
        6 message id, 7 "held" or "released", 8 details (JSON: actor, reason)
  Returns: { 0, txn }
           { -2, txn }  no such live message
           { -3, txn }  wrong state: holding an in-flight or held message, releasing one not held
           { -1, nodeTxn }
           { -5, txn, lastEntry, lastHist } a history id not above the queue's highest
]]
--@include "queueWrite"

local _, nodeTxn = checkTxn(KEYS[3], ARGV[1])
if _ == nil then return { -1, nodeTxn } end
if not histAbove(KEYS[3]) then return idsRefused(KEYS[3]) end

local msgId = ARGV[6]
local raw = redis.call('HGET', KEYS[4], msgId)
if not raw then return { -2, bumpTxn(KEYS[3]) } end
local st = cjson.decode(raw)
local hold = ARGV[7] == 'held'
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
addEvent(KEYS[2], ARGV[3], ARGV[4], ARGV[7], msgId, txn, ARGV[2], ARGV[8])
done()
return { 0, txn }
