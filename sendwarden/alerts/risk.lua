-- Count refusals of one account by rule, in per-minute buckets (RiskStore.record).
--
-- KEYS[1] risk hash   prefix:{account}:risk
--                     field "<bucket>:<rule>" = refusals by that rule in that bucket
-- ARGV[1] rule        the refusing rule, e.g. recipient-rate
-- ARGV[2] count       refusals to add (>= 1)
-- ARGV[3] now         microseconds since the epoch; '' = take the time here (TIME)
--
-- Written into the script when it is loaded (RiskStore), not sent with every call:
--   window  seconds (3600)
--   bucket  seconds per bucket (60)
--
-- A bucket counts while any part of it lies inside the window, as in the rate
-- limit (sendwarden.ratelimit.window). Expired fields are dropped when a new one
-- is made (at most once per rule and minute), so the hash stays small without a
-- full scan on every refusal. Returns the field's new count.
local risk_key = KEYS[1]
local count = tonumber(ARGV[2])
local window = $window
local bucket = $bucket

$script_time
local now = script_time(ARGV[3])

local bucket_us = bucket * 1000000
local current = math.floor(now / bucket_us)
local field = string.format('%d:%s', current, ARGV[1])
local total = redis.call('HINCRBY', risk_key, field, count)
if total == count then
  -- A new field, the newest: the whole hash is stale once it has left the window.
  redis.call('PEXPIRE', risk_key, (window + bucket) * 1000)
  local oldest_live = math.floor((now - window * 1000000) / bucket_us)
  local expired = nil
  for _, name in ipairs(redis.call('HKEYS', risk_key)) do
    local number = tonumber(string.match(name, '^(%d+):'))
    if number == nil or number < oldest_live then
      expired = expired or {}
      expired[#expired + 1] = name
    end
  end
  if expired then
    redis.call('HDEL', risk_key, unpack(expired))
  end
end
return total
