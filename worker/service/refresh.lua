-- Refresh the messages a worker still holds, and say which it no longer holds.
-- KEYS[1]: a request stream. ARGV[1]: the consumer group, ARGV[2]: the worker (consumer),
-- ARGV[3..]: ids of messages the worker works on.
-- A message still pending under this worker is claimed again with idle time 0 (JUSTID: its delivery
-- count stays). One that another worker reclaimed, or that is no longer pending, is left alone and
-- returned: the caller must stop writing for it. Atomic, so a reclaim cannot slip in between.
-- Two commands a stream, whatever the number of messages: one XPENDING for all this worker's
-- pending entries, one XCLAIM for those still held.
local mine = {}
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1000000, ARGV[2])
for _, entry in ipairs(pending) do
  mine[entry[1]] = true
end
local lost, held = {}, {}
for i = 3, #ARGV do
  if mine[ARGV[i]] then
    held[#held + 1] = ARGV[i]
  else
    lost[#lost + 1] = ARGV[i]
  end
end
for start = 1, #held, 1000 do
  local args = {KEYS[1], ARGV[1], ARGV[2], 0}
  for i = start, math.min(start + 999, #held) do
    args[#args + 1] = held[i]
  end
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
end
return lost
