-- Read an account's window without changing it (for `sendwarden ratelimit status`).
--
-- KEYS[1] rate hash   prefix:{account}:rate
-- KEYS[2] strike zset prefix:{account}:strikes
-- Returns {seconds, microseconds, {field, count, ...}, {strike, time, ...}}; the
-- caller sums the live buckets (sendwarden.ratelimit.window holds the rules).
local clock = redis.call('TIME')
return {clock[1], clock[2], redis.call('HGETALL', KEYS[1]),
  redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')}
