--[[
  Appends one message to a queue's live stream, idempotent on the message id.

  KEYS: 1 live stream, 2 history stream, 3 meta hash, 4 state hash
  ARGV: 1 expected txn, 2 now ms, 3 history id, 4 history max length,
        5 entry id ("ms-seq", caller-chosen, greater than any before),
        6 message id, 7 envelope sender, 8 recipients (JSON array),
        9 metadata (JSON object, kept in the entry and the event), 10 raw message,
        11 maximum live length of the queue, 12 first attempt time ms (0 = now: ready)
  Returns: { 0, txn, entryId }  appended
           { 1, txn, entryId }  already queued under that message id (nothing changed)
           { -1, nodeTxn }      expected txn differs from the node's (nothing changed)
           { -4, txn }          queue at its maximum length (nothing but txn changed)
]]
--@include "queueWrite"

local _, nodeTxn = checkTxn(KEYS[3], ARGV[1])
if _ == nil then return { -1, nodeTxn } end

local msgId = ARGV[6]
local existing = redis.call('HGET', KEYS[4], msgId)
if existing then
  return { 1, bumpTxn(KEYS[3]), cjson.decode(existing).e }
end

local m = redis.call('HMGET', KEYS[3], 'ready', 'deferred', 'held', 'inflight')
local live = (tonumber(m[1]) or 0) + (tonumber(m[2]) or 0) + (tonumber(m[3]) or 0) + (tonumber(m[4]) or 0)
if live >= tonumber(ARGV[11]) then
  return { -4, bumpTxn(KEYS[3]) }
end

local entryId = ARGV[5]
local raw = ARGV[10]
local nextAt = tonumber(ARGV[12])
local st = nextAt > 0 and 'd' or 'r'
redis.call('XADD', KEYS[1], entryId, 'm', msgId, 'f', ARGV[7], 'r', ARGV[8], 'a', ARGV[2], 'meta', ARGV[9], 'raw', raw)
redis.call('HSET', KEYS[4], msgId, cjson.encode({ e = entryId, s = st, a = 0, n = nextAt, b = #raw }))
redis.call('HINCRBY', KEYS[3], COUNTER[st], 1)
redis.call('HINCRBY', KEYS[3], 'bytes', #raw)
redis.call('HINCRBY', KEYS[3], 'appended', 1)
if redis.call('HEXISTS', KEYS[3], 'oldest') == 0 then
  redis.call('HSET', KEYS[3], 'oldest', entryId)
end
local txn = bumpTxn(KEYS[3])
addEvent(KEYS[2], ARGV[3], ARGV[4], 'accepted', msgId, txn, ARGV[2], ARGV[9])
return { 0, txn, entryId }
