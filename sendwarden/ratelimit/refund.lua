-- Give back recipients reserved by a transaction that was refused or aborted.
--
-- KEYS[1] rate hash  prefix:{account}:rate
-- ARGV    pairs of (bucket, cost) exactly as the reservations returned them
--
-- A bucket that has already left the window (and been deleted) is not recreated:
-- HINCRBY on a missing field gives a count <= 0, which is deleted at once.
local rate_key = KEYS[1]
local returned = 0
for i = 1, #ARGV, 2 do
  local cost = tonumber(ARGV[i + 1])
  local left = redis.call('HINCRBY', rate_key, ARGV[i], -cost)
  if left <= 0 then
    redis.call('HDEL', rate_key, ARGV[i])
    returned = returned + cost + left
  else
    returned = returned + cost
  end
end
return returned
