-- Shared by every queue write script. Keys, in this order, in every script:
--   KEYS[1] live stream   KEYS[2] history stream   KEYS[3] meta hash   KEYS[4] state hash
-- Common ARGV, in this order:
--   ARGV[1] expected transaction number   ARGV[2] now (ms)
--   ARGV[3] first history entry id of this call ("ms-seq", chosen by the caller; the sequence part
--           grows by one per event)   ARGV[4] history max length (exact; 0: no cap here, the history
--           is archived first and trimmed by trimHistory only below what the archive confirmed)
--   ARGV[5] the write set: ids of the replicas this write is sent to, comma-separated. Kept in the
--           meta hash (`members`): recovery proves a replica current from it (DESIGN, invariant 9).
--   ARGV[6] the writer's ownership epoch (DESIGN, invariant 10): a queue whose meta hash holds a
--           higher one belongs to a newer owner, and the write is refused (-6) with no change.
-- Return value of every script: { code, txn, ... }. code 0 ok; see each script for the others.
-- -1 (txn mismatch) is the only refusal that leaves the transaction number as it is; every other
-- outcome, an error or a no-op included, counts as a transaction, so that writes the caller has
-- pipelined behind it keep their expected numbers on both replicas.
-- Every precondition is checked before the first write: a script either applies whole, or changes
-- nothing but the transaction number.
-- Meta hash fields: txn, members, epoch, lastEntry (highest live entry id ever generated), lastHist
-- (highest history id ever written), the counters ready deferred held inflight bytes appended,
-- oldest (first live entry id), and one count per settle outcome.

local function checkTxn(metaKey, expected)
  local cur = tonumber(redis.call('HGET', metaKey, 'txn') or '0')
  if cur ~= tonumber(expected) then
    return nil, cur
  end
  return cur
end

-- The epoch of a newer owner when there is one (the write is then refused), else nil.
local function fencedBy(metaKey)
  local epoch = tonumber(redis.call('HGET', metaKey, 'epoch') or '0')
  if epoch > tonumber(ARGV[6]) then return epoch end
  return nil
end

local function bumpTxn(metaKey)
  redis.call('HSET', metaKey, 'members', ARGV[5], 'epoch', ARGV[6])
  return redis.call('HINCRBY', metaKey, 'txn', 1)
end

local function parseId(id)
  local ms, seq = string.match(id or '', '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

-- True when stream id a ("ms-seq") is strictly above b (or b is absent).
local function above(a, b)
  if not b then return true end
  local ams, aseq = parseId(a)
  local bms, bseq = parseId(b)
  if not ams then return false end
  if not bms then return true end
  return ams > bms or (ams == bms and aseq > bseq)
end

-- Refusal -5: an id the caller chose is not above the highest the queue ever had. Nothing but the
-- transaction number changes; the caller learns the ids to continue from.
local function idsRefused(metaKey)
  local last = redis.call('HMGET', metaKey, 'lastEntry', 'lastHist')
  return { -5, bumpTxn(metaKey), last[1] or '', last[2] or '' }
end

local function histAbove(metaKey)
  return above(ARGV[3], redis.call('HGET', metaKey, 'lastHist'))
end

-- The checks every queue write makes before its first write, in this order: the owner's epoch,
-- the transaction number, the history id. Returns the refusal to return, or nil to go on.
local function refusal()
  local newer = fencedBy(KEYS[3])
  if newer then return { -6, newer } end
  local cur, nodeTxn = checkTxn(KEYS[3], ARGV[1])
  if cur == nil then return { -1, nodeTxn } end
  if not histAbove(KEYS[3]) then return idsRefused(KEYS[3]) end
  return nil
end

-- History ids for a batch: the next one of the batch is one after the previous.
local function histIds(first)
  local ms, seq = string.match(first, '^(%d+)-(%d+)$')
  seq = tonumber(seq) - 1
  return function()
    seq = seq + 1
    return ms .. '-' .. seq
  end
end

-- The last history id this call wrote: kept in the meta hash by done().
local lastHistId = nil

local function addEvent(histKey, histId, histMax, kind, msgId, txn, now, details)
  if histMax == '0' then
    redis.call('XADD', histKey, histId, 't', kind, 'm', msgId, 'x', txn, 'at', now, 'd', details)
  else
    redis.call('XADD', histKey, 'MAXLEN', '=', histMax, histId,
      't', kind, 'm', msgId, 'x', txn, 'at', now, 'd', details)
  end
  lastHistId = histId
end

-- Every script that added events ends with done(): the highest history id goes to the meta hash.
local function done()
  if lastHistId then redis.call('HSET', KEYS[3], 'lastHist', lastHistId) end
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
