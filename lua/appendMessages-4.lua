--[[
  Appends a batch of messages to a queue's live stream, each idempotent on its message id. The
  gateway gathers the appends that arrive while the previous batch is on its way (group commit);
  the batch is one transaction.

  KEYS: 1 live stream, 2 history stream, 3 meta hash, 4 state hash
  ARGV: 1-6 as in includes/queueWrite.lua, 7 maximum live length of the queue, 8 count n,
        then n groups of 8: entry id ("ms-seq", caller-chosen, increasing), message id,
        envelope sender, recipients (JSON array), metadata (JSON object, kept in the entry),
        raw message, first attempt time ms (0 = ready now), the `accepted` event's details (JSON
        object: the envelope, the size and the metadata, as consumers and the event log get them)
  Returns: { 0, txn, code1, entryId1, code2, entryId2, ... } with per message
             code 0  appended
             code 1  already queued under that message id (entryId is the existing one)
             code -4 queue at its maximum length (not appended)
           { -6, epoch } the queue belongs to a newer owner (epoch): nothing changed
           { -1, nodeTxn } expected txn differs from the node's (nothing changed)
           { -5, txn, lastEntry, lastHist } an entry or history id not above the queue's highest
                           (nothing but txn changed)
]]
--@include "queueWrite"

local refused = refusal()
if refused then return refused end
local n = tonumber(ARGV[8])
if not above(ARGV[9], redis.call('HGET', KEYS[3], 'lastEntry')) then return idsRefused(KEYS[3]) end
local txn = bumpTxn(KEYS[3])
local nextHistId = histIds(ARGV[3])
local maxLen = tonumber(ARGV[7])
local m = redis.call('HMGET', KEYS[3], 'ready', 'deferred', 'held', 'inflight', 'bytes', 'appended', 'oldest')
local c = { r = tonumber(m[1]) or 0, d = tonumber(m[2]) or 0, h = tonumber(m[3]) or 0, f = tonumber(m[4]) or 0 }
local bytes, appended, oldest = tonumber(m[5]) or 0, tonumber(m[6]) or 0, m[7]
local out = { 0, txn }
for i = 0, n - 1 do
  local b = 9 + i * 8
  local entryId, msgId = ARGV[b], ARGV[b + 1]
  local existing = redis.call('HGET', KEYS[4], msgId)
  if existing then
    out[#out + 1] = 1
    out[#out + 1] = cjson.decode(existing).e
  elseif c.r + c.d + c.h + c.f >= maxLen then
    out[#out + 1] = -4
    out[#out + 1] = ''
  else
    local raw = ARGV[b + 5]
    local nextAt = tonumber(ARGV[b + 6])
    local st = nextAt > 0 and 'd' or 'r'
    redis.call('XADD', KEYS[1], entryId, 'm', msgId, 'f', ARGV[b + 2], 'r', ARGV[b + 3], 'a', ARGV[2], 'meta', ARGV[b + 4], 'raw', raw)
    redis.call('HSET', KEYS[4], msgId, cjson.encode({ e = entryId, s = st, a = 0, n = nextAt, b = #raw }))
    c[st] = c[st] + 1
    bytes = bytes + #raw
    appended = appended + 1
    if not oldest then oldest = entryId end
    addEvent(KEYS[2], nextHistId(), ARGV[4], 'accepted', msgId, txn, ARGV[2], ARGV[b + 7])
    out[#out + 1] = 0
    out[#out + 1] = entryId
  end
end
redis.call('HSET', KEYS[3], 'lastEntry', ARGV[9 + (n - 1) * 8])
if oldest then
  redis.call('HSET', KEYS[3], 'ready', c.r, 'deferred', c.d, 'bytes', bytes, 'appended', appended, 'oldest', oldest)
end
done()
return out
