--[[
  Marks ready (or due deferred) messages in flight for a delivery attempt and returns them.

  KEYS: 1 live stream, 2 history stream, 3 meta hash, 4 state hash
  ARGV: 1 expected txn, 2 now ms, 3 first history id (its sequence part is incremented per
        event), 4 history max length, 5 return entries (1 on the node that serves reads, 0 on
        the other), 6.. message ids
  Returns: { 0, txn, taken, { msgId, attempt, entryFields... }... }
           { -1, nodeTxn }
  Messages that are not ready or deferred (held, in flight, gone) are skipped.
]]
--@include "queueWrite"

local _, nodeTxn = checkTxn(KEYS[3], ARGV[1])
if _ == nil then return { -1, nodeTxn } end

local txn = bumpTxn(KEYS[3])
local nextHistId = histIds(ARGV[3])
local withEntries = ARGV[5] == '1'
local out = { 0, txn, 0 }
local taken = 0
for i = 6, #ARGV do
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
      if withEntries then
        local entry = redis.call('XRANGE', KEYS[1], st.e, st.e)[1]
        out[#out + 1] = { msgId, st.a + 1, st.r and cjson.encode(st.r) or '', entry and entry[2] or {} }
      end
    end
  end
end
out[3] = taken
return out
