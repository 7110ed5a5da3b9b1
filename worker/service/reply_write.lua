-- Append one request's reply events, only if this worker owns the request (fencing).
-- KEYS[1]: the reply stream, KEYS[2]: the request's owner key.
-- ARGV[1]: the writing worker, ARGV[2]: seconds the stream lives on after this write, ARGV[3]: '1' when
-- this write completes the reply (the owner key then gets the same TTL), ARGV[4..]: the events' JSON.
-- The owner key names the worker that took the request last. A worker that finds another's name
-- there was taken over while it was paused or cut off: nothing is written and 0 comes back. A worker
-- that finds no owner (it is the first to write) becomes the owner. Atomic, so a takeover cannot slip
-- in between the check and the write.
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then
  return 0
end
local ttl = tonumber(ARGV[2])
if not owner then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ttl)
elseif ARGV[3] == '1' then
  redis.call('EXPIRE', KEYS[2], ttl)  -- the reply is complete: the owner goes with the stream
end
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'data', ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ttl)
return 1
