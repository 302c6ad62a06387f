--[[
  Reads a block of a queue's live stream without the bodies: each entry's id, message id and body
  size, for the state rebuild (rebuildState-4.lua). Read only; at most ARGV[2] entries.

  KEYS: 1 live stream
  ARGV: 1 the first id to read ("-", or "(id" for the entries after id), 2 count
  Returns: { entryId1, msgId1, bytes1, entryId2, ... } in stream order
]]

local out = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))) do
  local f = e[2]
  local msgId, bytes = '', 0
  for i = 1, #f, 2 do
    if f[i] == 'm' then msgId = f[i + 1] elseif f[i] == 'raw' then bytes = #f[i + 1] end
  end
  out[#out + 1] = e[1]
  out[#out + 1] = msgId
  out[#out + 1] = bytes
end
return out
