--[[
  Marks ready (or due deferred) messages in flight for a delivery attempt and returns them.

  KEYS: 1 live stream, 2 history stream, 3 meta hash, 4 state hash
  ARGV: 1-6 as in includes/queueWrite.lua, 7 return entries (1 on the node that serves reads,
        0 on the other), 8.. message ids
  Returns: { 0, txn, taken, { msgId, attempt, remaining recipients (JSON) or '', entryFields }... }
           (entryFields empty where ARGV[7] is 0: the caller reads them from another reply, or
           from this node if that reply is lost)
           { -6, epoch } the queue belongs to a newer owner (epoch): nothing changed
           { -1, nodeTxn }
           { -5, txn, lastEntry, lastHist } a history id not above the queue's highest
  Messages that are not ready or deferred (held, in flight, gone) are skipped.
]]
--@include "queueWrite"

local refused = refusal()
if refused then return refused end

local txn = bumpTxn(KEYS[3])
local nextHistId = histIds(ARGV[3])
local withEntries = ARGV[7] == '1'
local out = { 0, txn, 0 }
local taken = 0
for i = 8, #ARGV do
  local msgId = ARGV[i]
  local raw = redis.call('HGET', KEYS[4], msgId)
  if raw then
    local st = cjson.decode(raw)
    if st.s == 'r' or st.s == 'd' then
      redis.call('HINCRBY', KEYS[3], COUNTER[st.s], -1)
      redis.call('HINCRBY', KEYS[3], 'inflight', 1)
      st.s = 'f'
      redis.call('HSET', KEYS[4], msgId, cjson.encode(st))
      addEvent(KEYS[2], nextHistId(), ARGV[4], 'attempted', msgId, txn, ARGV[2],
        cjson.encode({ attempt = st.a + 1 }))
      taken = taken + 1
      local fields = {}
      if withEntries then
        local entry = redis.call('XRANGE', KEYS[1], st.e, st.e)[1]
        fields = entry and entry[2] or {}
      end
      out[#out + 1] = { msgId, st.a + 1, st.r and cjson.encode(st.r) or '', fields }
    end
  end
end
out[3] = taken
done()
return out
