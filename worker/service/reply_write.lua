-- Append the reply events of one engine step for several requests, each only if this worker owns it
-- (fencing). One call per step on one Redis (a cluster gives each request a call of its own: its keys
-- share a slot of their own).
-- KEYS: pairs (the request's reply stream, its owner key).
-- ARGV[1]: the writing worker, then per request: seconds its stream and owner live on after this
-- write, '1' when this write completes the reply, the number of events, the events' JSON.
-- Returns one 1 (written) or 0 (fenced) per request.
-- The owner key names the worker that took the request last. A worker that finds another's name
-- there was taken over while it was paused or cut off: nothing is written for that request. A worker
-- that finds no owner (it is the first to write) becomes the owner. Atomic, so a takeover cannot slip
-- in between the check and the write. The owners are read with one MGET for the whole step.
-- A stream's expiry is armed together with its owner key's, on the first write and on the final
-- one, not on every step: the two lapse together, so a reply still running when they do re-arms both
-- on its next write.
local owner_keys = {}
for i = 2, #KEYS, 2 do
  owner_keys[#owner_keys + 1] = KEYS[i]
end
local owners = redis.call('MGET', unpack(owner_keys))
local worker = ARGV[1]
local written = {}
local a = 2
for r = 1, #owner_keys do
  local stream, owner = KEYS[2 * r - 1], owners[r]
  local ttl, is_final, n = tonumber(ARGV[a]), ARGV[a + 1], tonumber(ARGV[a + 2])
  local first = a + 3
  a = first + n
  if owner and owner ~= worker then
    written[r] = 0
  else
    local arm = (not owner) or is_final == '1'
    if arm then
      redis.call('SET', owner_keys[r], worker, 'EX', ttl)
    end
    for i = first, first + n - 1 do
      redis.call('XADD', stream, '*', 'data', ARGV[i])
    end
    if arm then
      redis.call('EXPIRE', stream, ttl)
    end
    written[r] = 1
  end
end
return written
