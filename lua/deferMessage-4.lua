--[[
  Defers a message after a failed attempt: attempt count, next attempt time, last reply, and
  optionally the recipients still to do (the others were settled by the attempt).

  KEYS: 1 live stream, 2 history stream, 3 meta hash, 4 state hash
  ARGV: 1-6 as in includes/queueWrite.lua,
        7 message id, 8 next attempt ms, 9 details (JSON: reply, mx, attempt, ...),
        10 remaining recipients (JSON array) or "" to keep them all,
        11 event kind ("deferred", or "requeued" for an in-flight message put back untried)
  Returns: { 0, txn, attempts }
           { -2, txn }  no such live message
           { -3, txn }  message is held (its hold wins; nothing but txn changed)
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
if st.s == 'h' then return { -3, bumpTxn(KEYS[3]) } end
local requeue = ARGV[11] == 'requeued'
local to = requeue and 'r' or 'd'
redis.call('HINCRBY', KEYS[3], COUNTER[st.s], -1)
redis.call('HINCRBY', KEYS[3], COUNTER[to], 1)
st.s = to
if not requeue then st.a = st.a + 1 end
st.n = tonumber(ARGV[8])
if ARGV[10] ~= '' then st.r = cjson.decode(ARGV[10]) end
redis.call('HSET', KEYS[4], msgId, cjson.encode(st))
local txn = bumpTxn(KEYS[3])
addEvent(KEYS[2], ARGV[3], ARGV[4], ARGV[11], msgId, txn, ARGV[2], ARGV[9])
done()
return { 0, txn, st.a }
