-- Give back reservations of a transaction that was refused or aborted, idempotently.
--
-- KEYS[1] rate hash      prefix:{account}:rate
-- KEYS[2] void hash      prefix:{account}:void
-- KEYS[3] records base   prefix:{account}:res   (+ ':' .. bucket: reservation id -> cost)
-- ARGV[1] now            microseconds since the epoch; '' = take the time here (TIME)
-- ARGV    then pairs of (reservation id, bucket); bucket -1 = unknown (the reservation
--         timed out: it may have run, may run later, or never)
--
-- Each reservation is given back at most once, by exactly the cost recorded for it
-- when it was admitted, to exactly its bucket: a late or repeated refund finds no
-- record and changes no count, and no refund touches what other reservations
-- counted. An id with no record is written to the void hash, so a reservation that
-- reaches Redis after its own refund counts nothing. Returns the recipients given
-- back (a bucket that has already left the window gives back nothing).
local rate_key, void_key, records = KEYS[1], KEYS[2], KEYS[3]
local window = $window
local bucket = $bucket

$script_time

local lifetime = (window + bucket) * 1000
local returned = 0
local current, oldest_live = nil, nil
for i = 2, #ARGV, 2 do
  local id, number = ARGV[i], tonumber(ARGV[i + 1])
  local first, last = number, number
  if number < 0 then
    -- Unknown bucket: the reservation ran (if at all) at some time within the window.
    if current == nil then
      local now = script_time(ARGV[1])
      current = math.floor(now / (bucket * 1000000))
      oldest_live = math.floor((now - window * 1000000) / (bucket * 1000000))
    end
    first, last = current + 1, oldest_live
  end
  local cost, found = nil, nil
  for candidate = first, last, -1 do
    cost = redis.call('HGET', records .. ':' .. candidate, id)
    if cost then
      found = candidate
      break
    end
  end
  if cost then
    redis.call('HDEL', records .. ':' .. found, id)
    cost = tonumber(cost)
    local have = tonumber(redis.call('HGET', rate_key, found) or '0')
    local give = math.min(cost, have)
    if give > 0 then
      -- The field goes only when this reservation was all that was left in it.
      if give == have then
        redis.call('HDEL', rate_key, found)
      else
        redis.call('HINCRBY', rate_key, found, -give)
      end
      returned = returned + give
    end
  else
    redis.call('HSET', void_key, id, 1)
    redis.call('PEXPIRE', void_key, lifetime)
  end
end
return returned
