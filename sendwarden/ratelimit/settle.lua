-- End of message, one round trip: give back what a batch reservation reserved but
-- did not use, and count, then record, the message's distinct recipients for the
-- consent rule's campaign counter (keys of the same account: one hash tag, so this
-- runs on Redis Cluster).
--
-- KEYS[1] rate hash         prefix:{account}:rate
-- KEYS[2] records base      prefix:{account}:res   (+ ':' .. bucket: reservation id -> cost)
-- KEYS[3..] recipient HLLs  prefix:{account}:rcpt-hll:MINUTE, newest first (may be none)
-- ARGV[1] reservation id    '' = nothing to give back
-- ARGV[2] bucket            the reservation's bucket
-- ARGV[3] keep              recipients the reservation keeps (the ones it was used for)
-- ARGV[4] count             '1': return the distinct count of KEYS[3..] before adding
-- ARGV[5] ttl               seconds the newest HLL lives
-- ARGV[6..] recipients      added to KEYS[3]
--
-- Idempotent like refund.lua: the reservation's record is lowered to `keep` (never
-- raised), and the rate bucket by exactly what the record lost, so a repeat gives
-- back nothing and a later refund of the id gives back exactly `keep`.
-- Returns {given_back, distinct_before}.
local rate_key, records = KEYS[1], KEYS[2]
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
local distinct = 0
if #KEYS > 2 then
  if ARGV[4] == '1' then
    distinct = redis.call('PFCOUNT', unpack(KEYS, 3))
  end
  if #ARGV > 5 then
    redis.call('PFADD', KEYS[3], unpack(ARGV, 6))
    redis.call('EXPIRE', KEYS[3], ARGV[5])
  end
end
return {given, distinct}
