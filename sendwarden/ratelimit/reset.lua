-- Forget an account's counts, strikes and reservation records (`ratelimit reset`).
--
-- KEYS[1] rate hash, KEYS[2] strike zset, KEYS[3] void hash, KEYS[4] records base
-- ARGV[1] now (microseconds; '' = TIME)
-- The records go too: a refund of a reservation made before the reset must not
-- take from what is counted after it. Returns the number of keys deleted.
local window = $window
local bucket = $bucket

$script_time

local now = script_time(ARGV[1])
local current = math.floor(now / (bucket * 1000000))
local oldest = math.floor((now - window * 1000000) / (bucket * 1000000))
local deleted = redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
for number = oldest - 1, current + 1 do
  deleted = deleted + redis.call('DEL', KEYS[4] .. ':' .. number)
end
return deleted
