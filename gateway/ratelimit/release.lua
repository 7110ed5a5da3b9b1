-- Release one admitted request: free its concurrency slot and give back the reserved tokens it did
-- not use (or take the extra it used beyond the reservation; the bucket may go below zero and then
-- throttles the key's next requests until it refills).
--
-- KEYS[1] token bucket (hash level, ts)   KEYS[2] in-flight set (zset)
-- ARGV[1] tokens per minute (0 = unlimited)   ARGV[2] tokens reserved   ARGV[3] tokens used   ARGV[4] req_id

local tpm = tonumber(ARGV[1])
local reserved = tonumber(ARGV[2])
local used = tonumber(ARGV[3])

redis.call("ZREM", KEYS[2], ARGV[4])
if tpm <= 0 or reserved == used then return 0 end

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call("HMGET", KEYS[1], "level", "ts")
local lvl, ts = tonumber(v[1]), tonumber(v[2])
if lvl == nil or ts == nil then lvl, ts = tpm, now end
lvl = math.min(tpm, math.min(tpm, lvl + math.max(0, now - ts) * tpm / 60000) + reserved - used)
redis.call("HSET", KEYS[1], "level", tostring(lvl), "ts", tostring(now))
local full_ms = 0
if lvl < tpm then full_ms = math.ceil((tpm - lvl) * 60000 / tpm) end
redis.call("PEXPIRE", KEYS[1], full_ms + 1000)
return 1
