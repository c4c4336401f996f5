-- One fragment of a message sent in parts (message/partial): record its size and
-- return what the fragments seen so far add up to.
-- KEYS[1]  the hash of one fragmented message: prefix:{account}:partial:ID
-- ARGV[1]  the fragment's number ("n3"; a fragment sent again replaces itself)
-- ARGV[2]  its size in bytes
-- ARGV[3]  the total number of fragments it declares (0: none)
-- ARGV[4]  seconds the record is kept after the last fragment
-- Returns {bytes of all fragments, fragments seen, largest declared total}.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local declared = tonumber(ARGV[3])
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
if declared > total then
  total = declared
  redis.call('HSET', KEYS[1], 'total', total)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
local bytes, count = 0, 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 1) == 'n' then
    bytes = bytes + tonumber(fields[i + 1])
    count = count + 1
  end
end
return {bytes, count, total}
