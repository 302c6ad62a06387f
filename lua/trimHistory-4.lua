--[[
  Trims a queue's history stream below an id: the history budget's oldest-first trim across
  queues, and the cap of queue.historyMaxLength once the history is archived. The caller never
  passes an id beyond the lifecycle events cursor of the queue or what the archive confirmed, so no
  event a consumer has not been sent, or that is not archived, is trimmed (DESIGN, invariant 12).
  No message changes and no event is added; the transaction number moves, as for every write, so
  both replicas stay equal.

  KEYS: 1 live stream, 2 history stream, 3 meta hash, 4 state hash
  ARGV: 1-6 as in includes/queueWrite.lua (ARGV[3] is checked, not written), 7 the lowest id that
        must be kept (every event with a lower id may go), 8 the length to trim to (0: every event
        below ARGV[7] goes, XTRIM MINID, reading nothing: the history budget's trim, and the cap's
        cut at an event id the gateway kept, src/queue/queue.ts historyCut(); n > 0: only the
        oldest events above n, and below ARGV[7], at most 1,000 of them in one call, so that the
        queue's writes on this node never wait long behind it; the caller calls again while the
        history is over its cap: events from before the gateway started). The usual case, a
        cap trimmed just after the archive moved its cursor: the events from ARGV[7] on are few,
        counted by reading them (at most 1,000), and when they fit in the n kept the oldest go by
        XTRIM MAXLEN, which reads nothing. Else the cut is found by reading the oldest events
        (XRANGE: whole entries, the costly way).
  Returns: { 0, txn, trimmed, length }
           { -6, epoch } the queue belongs to a newer owner (epoch): nothing changed
           { -1, nodeTxn }
           { -5, txn, lastEntry, lastHist } a history id not above the queue's highest
]]
--@include "queueWrite"

local refused = refusal()
if refused then return refused end

local txn = bumpTxn(KEYS[3])
local keep = tonumber(ARGV[8])
local trimmed = 0
if keep == 0 then
  trimmed = redis.call('XTRIM', KEYS[2], 'MINID', ARGV[7])
else
  local len = redis.call('XLEN', KEYS[2])
  local excess = len - keep
  if excess > 0 then
    local probe = math.min(keep + 1, 1000)
    local kept = #redis.call('XREVRANGE', KEYS[2], '+', ARGV[7], 'COUNT', probe)
    if kept < probe then
      -- every event from ARGV[7] on is among the newest `keep`: the oldest may go by count alone
      trimmed = redis.call('XTRIM', KEYS[2], 'MAXLEN', '=', len - math.min(excess, 1000))
    else
      local rows = redis.call('XRANGE', KEYS[2], '-', '(' .. ARGV[7], 'COUNT', math.min(excess, 1000))
      if #rows > 0 then
        local ms, seq = parseId(rows[#rows][1])
        trimmed = redis.call('XTRIM', KEYS[2], 'MINID', ms .. '-' .. (seq + 1))
      end
    end
  end
end
return { 0, txn, trimmed, redis.call('XLEN', KEYS[2]) }
