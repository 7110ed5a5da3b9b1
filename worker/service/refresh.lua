-- Refresh the messages a worker still holds, and say which it no longer holds.
-- KEYS[1]: a request stream. ARGV[1]: the consumer group, ARGV[2]: the worker (consumer),
-- ARGV[3..]: ids of messages the worker works on.
-- A message still pending under this worker is claimed again with idle time 0 (JUSTID: its delivery
-- count stays). One that another worker reclaimed, or that is no longer pending, is left alone and
-- returned: the caller must stop writing for it. Atomic, so a reclaim cannot slip in between.
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #entry == 0 or entry[1][2] ~= ARGV[2] then
    lost[#lost + 1] = id
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
  end
end
return lost
