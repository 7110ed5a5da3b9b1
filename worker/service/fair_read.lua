-- Take the next requests of one internal class in tenant-share order (a virtual token counter, VTC).
-- KEYS[1]: the class's virtual counters (hash tenant -> tokens served / weight),
-- KEYS[2]: the tenants that had queued work at the last pick (hash tenant -> 1),
-- KEYS[3..]: each tenant's request stream.
-- ARGV[1]: the consumer group, ARGV[2]: the worker (consumer), ARGV[3]: how many to take,
-- ARGV[4]: n, the number of tenants (#KEYS - 2), then n tenant names, then n weights, then n flags
-- ("1": its requests may be taken; "0": it is only counted, and the read stops when the counters
-- pick it next), then pairs (tenant index, cost) of requests this worker already read (a blocking
-- read) to charge.
-- Returns the counters of the n tenants (as strings), then one {tenant index, id, data, cost} per
-- request taken.
--
-- Each pick goes to the tenant with queued work whose counter is lowest, and charges it the request's
-- cost (its prompt and max_tokens, estimated by the gateway; the worker settles the difference when the
-- request ends) divided by the tenant's weight. A tenant whose queue was empty at the last pick returns
-- from idle: its counter is lifted to the lowest counter of the tenants that stayed busy (or, with
-- none, the highest of all), so it cannot claim service for the time it sent nothing.
-- Atomic, so the shares hold across every worker that picks from the same counters.
local counters, busy_key = KEYS[1], KEYS[2]
local group, consumer, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local names, weights, takeable, streams = {}, {}, {}, {}
for i = 1, n do
  names[i] = ARGV[4 + i]
  weights[i] = tonumber(ARGV[4 + n + i])
  takeable[i] = ARGV[4 + 2 * n + i] == '1'
  streams[i] = KEYS[2 + i]
end

local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function is_after(a, b)
  local am, as = parse_id(a)
  local bm, bs = parse_id(b)
  return am > bm or (am == bm and as > bs)
end

-- Whether the stream holds entries the group has not delivered yet (creating the group if missing).
local function has_queued(stream)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #last == 0 then
    return false
  end
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local fields = {}
    for j = 1, #info, 2 do
      fields[info[j]] = info[j + 1]
    end
    if fields['name'] == group then
      return is_after(last[1][1], fields['last-delivered-id'])
    end
  end
  redis.call('XGROUP', 'CREATE', stream, group, '0')
  return true
end

local was_busy = {}
local flat = redis.call('HGETALL', busy_key)
for j = 1, #flat, 2 do
  was_busy[flat[j]] = true
end
local counter, queued = {}, {}
local raw = redis.call('HMGET', counters, unpack(names))
local highest = 0
for i = 1, n do
  counter[i] = tonumber(raw[i]) or 0
  queued[i] = has_queued(streams[i])
  highest = math.max(highest, counter[i])
end
local charged = {}
for j = 5 + 3 * n, #ARGV, 2 do
  local i = tonumber(ARGV[j])
  charged[#charged + 1] = {i, tonumber(ARGV[j + 1])}
  queued[i] = true  -- it had work: this worker just read it
end

local floor = nil
for i = 1, n do
  if queued[i] and was_busy[names[i]] then
    floor = math.min(floor or counter[i], counter[i])
  end
end
local returning = {}
for i = 1, n do
  returning[i] = queued[i] and not was_busy[names[i]]
  if returning[i] then
    local lifted = floor or highest
    if counter[i] < lifted then
      counter[i] = lifted
      redis.call('HSET', counters, names[i], tostring(lifted))
    end
  end
end

local function charge(i, cost)
  local by = cost / weights[i]
  counter[i] = tonumber(redis.call('HINCRBYFLOAT', counters, names[i], tostring(by)))
end

for _, c in ipairs(charged) do
  charge(c[1], c[2])
end

local taken = {}
while #taken < count do
  local best = nil
  for i = 1, n do
    -- Ties go to a tenant back from idle: lifted to the busy minimum, it is next, not behind it.
    if queued[i] and (best == nil or counter[i] < counter[best]
        or (counter[i] == counter[best] and returning[i] and not returning[best])) then
      best = i
    end
  end
  if best == nil or not takeable[best] then
    break  -- the counters' next pick is a tenant this read may not take: it waits for a free slot
  end
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', streams[best], '>')
  local entry = reply and reply[1] and reply[1][2][1]
  if entry then
    local fields = {}
    for j = 1, #entry[2], 2 do
      fields[entry[2][j]] = entry[2][j + 1]
    end
    local cost = tonumber(fields['cost']) or 1
    charge(best, cost)
    taken[#taken + 1] = {best, entry[1], fields['data'] or false, tostring(cost)}
  end
  queued[best] = entry ~= nil and has_queued(streams[best])
end

redis.call('DEL', busy_key)
for i = 1, n do
  if queued[i] then
    redis.call('HSET', busy_key, names[i], 1)
  end
end
local out = {}
for i = 1, n do
  out[i] = tostring(counter[i])
end
for _, t in ipairs(taken) do
  out[#out + 1] = t
end
return out
