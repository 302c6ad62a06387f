-- Shared by every queue write script. Keys, in this order, in every script:
--   KEYS[1] live stream   KEYS[2] history stream   KEYS[3] meta hash   KEYS[4] state hash
-- Common ARGV, in this order:
--   ARGV[1] expected transaction number   ARGV[2] now (ms)
--   ARGV[3] history entry id ("ms-seq", chosen by the caller)   ARGV[4] history max length (exact)
-- Return value of every script: { code, txn, ... }. code 0 ok; see each script for the others.
-- -1 (txn mismatch) is the only refusal that leaves the transaction number as it is; every other
-- outcome, an error or a no-op included, counts as a transaction, so that writes the caller has
-- pipelined behind it keep their expected numbers on both replicas.

local function checkTxn(metaKey, expected)
  local cur = tonumber(redis.call('HGET', metaKey, 'txn') or '0')
  if cur ~= tonumber(expected) then
    return nil, cur
  end
  return cur
end

local function bumpTxn(metaKey)
  return redis.call('HINCRBY', metaKey, 'txn', 1)
end

-- History ids for a batch: the caller passes the first ("ms-seq"); the next one of the batch is
-- one after. histIds(first) returns the function that hands them out in order.
local function histIds(first)
  local ms, seq = string.match(first, '^(%d+)-(%d+)$')
  seq = tonumber(seq) - 1
  return function()
    seq = seq + 1
    return ms .. '-' .. seq
  end
end

local function addEvent(histKey, histId, histMax, kind, msgId, txn, now, details)
  redis.call('XADD', histKey, 'MAXLEN', '=', histMax, histId,
    't', kind, 'm', msgId, 'x', txn, 'at', now, 'd', details)
end

local COUNTER = { r = 'ready', d = 'deferred', h = 'held', f = 'inflight' }

-- After the live entry `entryId` left, keep `oldest` pointing at the first live entry.
local function fixOldest(liveKey, metaKey, entryId)
  if redis.call('HGET', metaKey, 'oldest') == entryId then
    local first = redis.call('XRANGE', liveKey, '-', '+', 'COUNT', 1)[1]
    if first then
      redis.call('HSET', metaKey, 'oldest', first[1])
    else
      redis.call('HDEL', metaKey, 'oldest')
    end
  end
end
