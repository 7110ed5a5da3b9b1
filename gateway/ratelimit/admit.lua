-- Admit one request against a key's limits, atomically (every gateway replica runs this same script).
--
-- Requests and tokens are token buckets that hold at most `limit` and refill at `limit` per minute, so
-- "remaining" is the bucket level and "reset" is the time until the bucket is full again. In-flight
-- requests are a sorted set of req_id -> lease expiry (ms), so a gateway that dies without releasing
-- frees its slots when the leases run out.
--
-- KEYS[1] request bucket (hash level, ts)   KEYS[2] token bucket (hash)   KEYS[3] in-flight set (zset)
-- ARGV[1] requests per minute (0 = unlimited)   ARGV[2] tokens per minute (0 = unlimited)
-- ARGV[3] max concurrent requests (0 = unlimited)   ARGV[4] tokens to reserve   ARGV[5] req_id
-- ARGV[6] lease ms   ARGV[7] "1" to only look (no reservation)
-- Returns {allowed, reason, req_remaining, req_reset_ms, tok_remaining, tok_reset_ms, retry_after_ms}.

local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local max_inflight = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local req_id = ARGV[5]
local lease_ms = tonumber(ARGV[6])
local peek = ARGV[7] == "1"

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function level(key, limit)
  if limit <= 0 then return 0 end
  local v = redis.call("HMGET", key, "level", "ts")
  local lvl, ts = tonumber(v[1]), tonumber(v[2])
  if lvl == nil or ts == nil then return limit end
  return math.min(limit, lvl + math.max(0, now - ts) * limit / 60000)
end

local function refill_ms(lvl, limit)
  if limit <= 0 or lvl >= limit then return 0 end
  return math.ceil((limit - lvl) * 60000 / limit)
end

local function store(key, lvl, limit)
  redis.call("HSET", key, "level", tostring(lvl), "ts", tostring(now))
  redis.call("PEXPIRE", key, refill_ms(lvl, limit) + 1000)
end

local req_level = level(KEYS[1], rpm)
local tok_level = level(KEYS[2], tpm)
local reason = ""
local retry_ms = 0

if max_inflight > 0 then
  redis.call("ZREMRANGEBYSCORE", KEYS[3], "-inf", now)
  if redis.call("ZCARD", KEYS[3]) >= max_inflight then
    reason = "concurrency"
    retry_ms = 1000
  end
end
if reason == "" and rpm > 0 and req_level < 1 then
  reason = "requests"
  retry_ms = math.ceil((1 - req_level) * 60000 / rpm)
end
if reason == "" and tpm > 0 and cost > tpm then
  reason = "too_large"
elseif reason == "" and tpm > 0 and tok_level < cost then
  reason = "tokens"
  retry_ms = math.ceil((cost - tok_level) * 60000 / tpm)
end

if reason == "" and not peek then
  if rpm > 0 then
    req_level = req_level - 1
    store(KEYS[1], req_level, rpm)
  end
  if tpm > 0 then
    tok_level = tok_level - cost
    store(KEYS[2], tok_level, tpm)
  end
  if max_inflight > 0 then
    redis.call("ZADD", KEYS[3], now + lease_ms, req_id)
    redis.call("PEXPIRE", KEYS[3], lease_ms)
  end
end

local allowed = 0
if reason == "" then allowed = 1 end
return {allowed, reason, math.floor(math.max(0, req_level)), refill_ms(req_level, rpm),
        math.floor(math.max(0, tok_level)), refill_ms(tok_level, tpm), retry_ms}
