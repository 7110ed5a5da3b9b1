-- Renew the concurrency slots a live gateway still holds, so they outlive their short lease.
-- KEYS[1] in-flight set (zset req_id -> lease expiry ms)   ARGV[1] lease ms   ARGV[2..] req_ids
-- Only members still there are renewed (XX): a slot released meanwhile stays released.
local t = redis.call("TIME")
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call("ZADD", KEYS[1], "XX", expiry, ARGV[i])
end
redis.call("PEXPIRE", KEYS[1], tonumber(ARGV[1]))
return 1
