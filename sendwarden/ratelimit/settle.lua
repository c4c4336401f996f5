-- End of message, one round trip: give back what a batch reservation reserved but
-- did not use; reserve, atomically, the recipients accepted provisionally beyond the
-- batch (within the room the account had when the MAIL script last looked); cache
-- "not suspended" for an account the durable store has just been asked about; and
-- count, then record, the message's distinct recipients for the consent rule's
-- campaign counter. Keys of one account: one hash tag, so this runs on Redis Cluster.
--
-- KEYS[1] rate hash         prefix:{account}:rate
-- KEYS[2] records base      prefix:{account}:res   (+ ':' .. bucket: reservation id -> cost)
-- KEYS[3] suspension        prefix:{account}:suspended
-- KEYS[4] void hash         prefix:{account}:void
-- KEYS[5..] recipient HLLs  prefix:{account}:rcpt-hll:MINUTE, newest first (may be none)
-- ARGV[1] reservation id    the batch; '' = nothing to give back
-- ARGV[2] bucket            the batch's bucket
-- ARGV[3] keep              recipients the batch keeps (the ones it was used for)
-- ARGV[4] extra id          a new reservation id for the provisional recipients; '' = none
-- ARGV[5] extra             how many recipients were accepted provisionally
-- ARGV[6] limit             recipients allowed per window
-- ARGV[7] now               microseconds since the epoch; '' = take the time here (TIME)
-- ARGV[8] fill              seconds to cache "not suspended" (set only if the key is
--                           still absent); '' = do not
-- ARGV[9] count             '1': return the distinct count of KEYS[5..] before adding
-- ARGV[10] ttl              seconds the newest HLL lives
-- ARGV[11..] recipients     added to KEYS[5] (not when the extra was refused)
--
-- The give-back is idempotent like refund.lua: the batch's record is lowered to
-- `keep` (never raised), and the rate bucket by exactly what the record lost, so a
-- repeat gives back nothing and a later refund of the id gives back exactly `keep`.
-- The extra is reserved like reserve.lua reserves (idempotent by its id, recorded for
-- a refund, nothing counted for an id refunded before it arrived), all of it or none:
-- when it does not fit under the limit now (other transactions of the account took
-- the room meanwhile), or the account was suspended meanwhile, nothing is counted and
-- the caller tempfails the message (the client sends it again later). It is no
-- strike: the sender was inside its limit when its recipients were accepted.
-- Returns {given_back, distinct_before, extra_admitted, extra_bucket, used, suspension}:
-- extra_admitted 1 (or no extra), 0 refused; used: the window's count after it all
-- (-1 when not read); suspension: the suspension JSON when that refused the extra.
local rate_key, records, suspended_key, void_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local window = $window
local bucket = $bucket
local record_ttl = $record_ttl

$script_time
$count_reservation

local given = 0
if ARGV[1] ~= '' then
  local record_key = records .. ':' .. ARGV[2]
  local cost = tonumber(redis.call('HGET', record_key, ARGV[1]) or '-1')
  local keep = tonumber(ARGV[3])
  if cost > keep then
    redis.call('HSET', record_key, ARGV[1], keep)
    local have = tonumber(redis.call('HGET', rate_key, ARGV[2]) or '0')
    given = math.min(cost - keep, have)
    if given > 0 then
      if given == have then
        redis.call('HDEL', rate_key, ARGV[2])
      else
        redis.call('HINCRBY', rate_key, ARGV[2], -given)
      end
    end
  end
end

local admitted, extra_bucket, used, suspension = 1, 0, -1, ''
local extra_id, extra = ARGV[4], tonumber(ARGV[5]) or 0
if extra_id ~= '' and extra > 0 then
  local now = script_time(ARGV[7])
  local bucket_us = bucket * 1000000
  local current = math.floor(now / bucket_us)
  local oldest_live = math.floor((now - window * 1000000) / bucket_us)
  extra_bucket = current
  local fields = redis.call('HGETALL', rate_key)
  used = 0
  for i = 1, #fields, 2 do
    local number = tonumber(fields[i])
    if number ~= nil and number >= oldest_live then
      used = used + tonumber(fields[i + 1])
    end
  end
  local seen = nil
  for number = current, current - 1, -1 do
    if redis.call('HGET', records .. ':' .. number, extra_id) then
      seen = number
      break
    end
  end
  if seen then
    extra_bucket = seen  -- a repeat of a settlement that ran: counted once
  elseif redis.call('EXISTS', void_key) == 1 and redis.call('HEXISTS', void_key, extra_id) == 1 then
    admitted = 0  -- refunded before it arrived: count nothing
  else
    local state = redis.call('GET', suspended_key) or ''
    if state ~= '' and state ~= '-' then
      admitted, suspension = 0, state
    elseif used + extra > tonumber(ARGV[6]) then
      admitted = 0
    else
      count_reservation(rate_key, records, extra_id, current, extra)
      redis.call('HDEL', rate_key, 'o')  -- admitted: an over-limit episode is over
      used = used + extra
    end
  end
end

if ARGV[8] ~= '' then
  redis.call('SET', suspended_key, '-', 'EX', ARGV[8], 'NX')
end

local distinct = 0
if #KEYS > 4 and admitted == 1 then
  if ARGV[9] == '1' then
    distinct = redis.call('PFCOUNT', unpack(KEYS, 5))
  end
  if #ARGV > 10 then
    redis.call('PFADD', KEYS[5], unpack(ARGV, 11))
    redis.call('EXPIRE', KEYS[5], ARGV[10])
  end
end
return {given, distinct, admitted, extra_bucket, used, suspension}
