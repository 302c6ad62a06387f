--[[
  Reads a block of a queue's history as the event log stores it (src/events/archive.ts): each
  entry already encoded, so that the gateway copies bytes instead of decoding every field. Read
  only; at most ARGV[2] entries.

  KEYS: 1 history stream
  ARGV: 1 the first id to read ("-", or "(id" for the entries after id), 2 count
  Returns: { histId1, msgId1, stored1, histId2, ... } in stream order; a stored event is the JSON
    array [ms, seq, kind, message id, txn, at, details], the details as the stream holds them
]]

local out = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))) do
  local f = e[2]
  local kind, msgId, txn, at, details = '', '', '0', '0', '{}'
  for i = 1, #f, 2 do
    local k, v = f[i], f[i + 1]
    if k == 't' then kind = v
    elseif k == 'm' then msgId = v
    elseif k == 'x' then txn = v
    elseif k == 'at' then at = v
    elseif k == 'd' and #v > 0 then details = v end
  end
  local ms, seq = string.match(e[1], '^(%d+)-(%d+)$')
  if not string.match(txn, '^%d+$') then txn = '0' end
  if not string.match(at, '^%d+$') then at = '0' end
  out[#out + 1] = e[1]
  out[#out + 1] = msgId
  out[#out + 1] = '[' .. ms .. ',' .. seq .. ',' .. cjson.encode(kind) .. ',' .. cjson.encode(msgId) .. ','
    .. txn .. ',' .. at .. ',' .. details .. ']'
end
return out
