-- Count `granted` recipients of reservation `id` in bucket `number` of the rate hash,
-- with the record that lets a refund give them back exactly once. The record is kept
-- as long as a transaction (and a refund owed across an outage) may last, not the
-- whole window: a refund that comes later finds nothing and gives nothing back.
-- (Shared by reserve.lua and settle.lua; uses their window, bucket and record_ttl.)
local function count_reservation(rate_key, records, id, number, granted)
  local record_key = records .. ':' .. number
  redis.call('HSET', record_key, id, granted)
  redis.call('PEXPIRE', record_key, record_ttl * 1000)
  if redis.call('HINCRBY', rate_key, number, granted) == granted then
    -- A new bucket, the newest: the whole hash is stale once it has left the window.
    redis.call('PEXPIRE', rate_key, (window + bucket) * 1000)
  end
end
