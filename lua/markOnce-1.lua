--[[
  A marker that something was done once (a delay warning for a message), shared by every member:
  set when absent, lapsing after the given time on the node's own clock. Run on every node of
  the pool; the caller did it first when a majority of the nodes set the marker for it.

  KEYS: 1 the marker key
  ARGV: 1 ms the marker lasts
  Returns: 1 set now (absent before), 0 already there
]]
if redis.call('SET', KEYS[1], '1', 'PX', ARGV[1], 'NX') then return 1 end
return 0
