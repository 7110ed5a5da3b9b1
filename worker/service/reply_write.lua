-- Append one request's reply events, only if this worker owns the request (fencing).
-- KEYS[1]: the reply stream, KEYS[2]: the request's owner key.
-- ARGV[1]: the writing worker, ARGV[2]: seconds the stream and owner live on after this write, ARGV[3]:
-- '1' when this write completes the reply, ARGV[4..]: the events' JSON.
-- The owner key names the worker that took the request last. A worker that finds another's name
-- there was taken over while it was paused or cut off: nothing is written and 0 comes back. A worker
-- that finds no owner (it is the first to write) becomes the owner. Atomic, so a takeover cannot slip
-- in between the check and the write.
-- The stream's expiry is armed together with the owner key's, on the first write and on the final
-- one, not on every step: the two lapse together, so a reply still running when they do re-arms both
-- on its next write.
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then
  return 0
end
local ttl = tonumber(ARGV[2])
local arm = (not owner) or ARGV[3] == '1'
if arm then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ttl)
end
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'data', ARGV[i])
end
if arm then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return 1
