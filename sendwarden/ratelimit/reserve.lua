-- Reserve `cost` recipients for one account in its sliding window, atomically.
--
-- One round trip decides and counts: the window is a hash of per-bucket counts
-- (field = bucket number = floor(now / bucket), value = recipients counted in it).
-- A bucket counts while any part of it lies inside the window, so the sum never
-- under-counts the true rolling window and the limit is never exceeded.
--
-- KEYS[1] rate hash       prefix:{account}:rate
-- KEYS[2] strike zset     prefix:{account}:strikes    (time each episode over the limit began)
-- KEYS[3] suspension      prefix:{account}:suspended  (same JSON as `sendwarden account suspend`;
--                         '-' = known not suspended; sendwarden.store.suspensions)
-- ARGV[1] cost            recipients to reserve (>= 1)
-- ARGV[2] limit           recipients allowed per window
-- ARGV[3] reason          suspension reason shown to the customer
-- KEYS[4] void hash       prefix:{account}:void  (reservation ids refunded before they arrived)
-- KEYS[5] records base    prefix:{account}:res   (+ ':' .. bucket: reservation id -> cost)
-- ARGV[4] now             microseconds since the epoch; '' = take the time here (TIME)
-- ARGV[5] reservation id  unique per reservation: makes the write idempotent
-- ARGV[6] want            reserve up to this many (>= cost) when they fit; '' = cost.
--                         Admission still asks only for `cost`: a batch reserved ahead
--                         for the next recipients never refuses one that would fit.
--                         cost 0 (a batch reserved at MAIL) is never refused nor a
--                         strike; it may be granted nothing.
--
-- A suspended account (KEYS[3] set, by staff or by this script) is refused here
-- too, whatever the count: the milter's MAIL-time suspension check may read a
-- briefly cached answer, this one never is.
-- ARGV[7] watch           '1': monitor-only mode, a refusal strikes and suspends nobody
--
-- Idempotence: every admitted reservation is recorded under its id in its bucket's
-- record hash (kept record_ttl seconds). A retry of an id already recorded
-- counts nothing again and returns the first answer; an id already refunded (the
-- caller timed out and gave it back before Redis ran it) counts nothing.
--
-- The settings that never change while a configuration runs are written into the
-- script when it is loaded (RecipientCounter), not sent with every decision:
--   window          seconds (3600)
--   bucket          seconds per bucket (60)
--   record_ttl      seconds a reservation's record is kept for its refund (900)
--   suspend_after   strikes that suspend the account (0 = never)
--   suspend_period  seconds within which the strikes must fall
--   by              who suspends (recorded in the suspension)
--
-- Returns {admitted, used, bucket, frees_at, now, suspended, granted, suspension}:
--   admitted  1 or 0
--   used      recipients counted in the window (after the reservation when admitted)
--   bucket    the bucket the reservation landed in (a refund decrements exactly it)
--   frees_at  refused: epoch second from which `cost` fits again (-1 if it never can)
--   now       the script's time, microseconds
--   suspended 1 when this refusal suspended the account
--   granted   recipients reserved (between cost and want) when admitted, else 0
--   suspension the account's suspension JSON when it is suspended, '-' when Redis
--             knows it is not, '' when Redis does not know (or for an id seen before)
local rate_key, strikes_key, suspended_key = KEYS[1], KEYS[2], KEYS[3]
local void_key, records = KEYS[4], KEYS[5]
local id = ARGV[5]
local cost = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local want = tonumber(ARGV[6]) or cost
local window = $window
local bucket = $bucket
local record_ttl = $record_ttl
local suspend_after = $suspend_after
local suspend_period = $suspend_period
local by = $by

$script_time
$count_reservation
local now = script_time(ARGV[4])

local bucket_us = bucket * 1000000
local current = math.floor(now / bucket_us)
local oldest_live = math.floor((now - window * 1000000) / bucket_us)

-- Sum the live buckets, drop the expired ones; the field 'o' marks "already over
-- the limit" so one episode of refusals counts as one strike. (No table is built on
-- this path: it runs for every recipient.)
local fields = redis.call('HGETALL', rate_key)
local used, over, expired = 0, false, nil
for i = 1, #fields, 2 do
  local number = tonumber(fields[i])
  if number == nil then
    over = true
  elseif number < oldest_live then
    expired = expired or {}
    expired[#expired + 1] = fields[i]
  else
    used = used + tonumber(fields[i + 1])
  end
end
if expired then
  redis.call('HDEL', rate_key, unpack(expired))
end

-- A retry of a reservation Redis already ran, or a late one already refunded.
if redis.call('EXISTS', void_key) == 1 and redis.call('HEXISTS', void_key, id) == 1 then
  return {0, used, current, -1, now, 0, 0, ''}
end
for number = current, current - 1, -1 do
  local recorded = redis.call('HGET', records .. ':' .. number, id)
  if recorded then
    return {1, used, number, 0, now, 0, tonumber(recorded), ''}
  end
end

-- The suspension key: the JSON of a suspension, '-' for "not suspended", absent when
-- Redis does not know (then the milter's suspension check asks the durable store).
local suspension = redis.call('GET', suspended_key) or ''
if suspension ~= '' and suspension ~= '-' then
  return {0, used, current, -1, now, 0, 0, suspension}
end

if used + cost <= limit then
  local granted = math.max(cost, math.min(want, limit - used))
  if granted == 0 then
    return {1, used, current, 0, now, 0, 0, suspension}
  end
  count_reservation(rate_key, records, id, current, granted)
  if over then
    redis.call('HDEL', rate_key, 'o')
  end
  return {1, used + granted, current, 0, now, 0, granted, suspension}
end

-- Refused. When does enough capacity free up? Buckets leave the window oldest
-- first; bucket b has left once now - window >= (b + 1) * bucket.
local frees_at = -1
if cost <= limit then
  local live = {}
  for i = 1, #fields, 2 do
    local number = tonumber(fields[i])
    if number ~= nil and number >= oldest_live then
      live[#live + 1] = {number, tonumber(fields[i + 1])}
    end
  end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  local excess = used + cost - limit
  for _, entry in ipairs(live) do
    excess = excess - entry[2]
    if excess <= 0 then
      frees_at = (entry[1] + 1) * bucket + window
      break
    end
  end
end

local function iso8601(seconds)
  -- civil date from days since the epoch (H. Hinnant's algorithm); Lua here has no os.date
  local days = math.floor(seconds / 86400)
  local rest = seconds - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02dZ', year, month, day,
    math.floor(rest / 3600), math.floor(rest % 3600 / 60), rest % 60)
end

local suspended = 0
if cost <= limit and not over and ARGV[7] ~= '1' then
  -- The first refusal of an episode (since the last admission) is one strike. A watched
  -- refusal (monitor-only mode) starts no episode and strikes nothing.
  redis.call('HSET', rate_key, 'o', 1)
  if suspend_after > 0 then
    local period_us = suspend_period * 1000000
    redis.call('ZADD', strikes_key, now, now)
    redis.call('ZREMRANGEBYSCORE', strikes_key, '-inf', now - period_us)
    redis.call('PEXPIRE', strikes_key, suspend_period * 1000)
    if redis.call('ZCARD', strikes_key) >= suspend_after then
      local cached = redis.call('GET', suspended_key)  -- '-' caches "not suspended"
      if not cached or cached == '-' then
        redis.call('SET', suspended_key, cjson.encode({
          reason = ARGV[3], since = iso8601(math.floor(now / 1000000)), by = by}))
        suspended = 1
      end
      redis.call('DEL', strikes_key)
    end
  end
end
return {0, used, current, frees_at, now, suspended, 0, suspension}
