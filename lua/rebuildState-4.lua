--[[
  Writes a queue's state back from its events (`streamgate queue rebuild-state DOMAIN`): the
  gateway folds the queue's events into each live message's state record and the counters, then
  writes them in three steps, each a transaction of its own, while the queue's other writes wait.
  begin marks the queue (meta `rebuilding`) and empties the state hash; put writes a block of
  state records; commit writes the counters, removes the mark and records a `rebuilt` event. A
  rebuild cut off before its commit leaves the mark and part of the state: the next rebuild starts
  again from begin (the events and the live stream, its sources, are never changed by it).

  KEYS: 1 live stream, 2 history stream, 3 meta hash, 4 state hash
  ARGV: 1-6 as in includes/queueWrite.lua,
        7 step: "begin", "put" or "commit"
        begin: 8 the time the rebuild started (ms)
        put: 8.. pairs of message id, state record (JSON {e, s, a, n, b, r?})
        commit: 8 the event's details (JSON), 9.. pairs of meta field and value (the counters:
                ready deferred held inflight bytes appended, one per settle outcome); an empty
                value removes the field
  Returns: { 0, txn }
           { -6, epoch } the queue belongs to a newer owner (epoch): nothing changed
           { -1, nodeTxn }
           { -5, txn, lastEntry, lastHist } a history id not above the queue's highest
]]
--@include "queueWrite"

local refused = refusal()
if refused then return refused end

local txn = bumpTxn(KEYS[3])
local step = ARGV[7]
if step == 'begin' then
  redis.call('HSET', KEYS[3], 'rebuilding', ARGV[8])
  redis.call('DEL', KEYS[4])
elseif step == 'put' then
  for i = 8, #ARGV, 2 do
    redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  end
elseif step == 'commit' then
  for i = 9, #ARGV, 2 do
    if ARGV[i + 1] == '' then
      redis.call('HDEL', KEYS[3], ARGV[i])
    else
      redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
    end
  end
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  if first then
    redis.call('HSET', KEYS[3], 'oldest', first[1])
  else
    redis.call('HDEL', KEYS[3], 'oldest')
  end
  redis.call('HDEL', KEYS[3], 'rebuilding')
  addEvent(KEYS[2], ARGV[3], ARGV[4], 'rebuilt', '', txn, ARGV[2], ARGV[8])
  done()
end
return { 0, txn }
