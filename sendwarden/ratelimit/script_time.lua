-- The time of a call in microseconds since the epoch: the value a test passes in, or
-- else Redis's own clock (TIME), so MTA hosts need no synchronised clocks.
local function script_time(given)
  if given ~= '' then
    return tonumber(given)
  end
  local clock = redis.call('TIME')
  return tonumber(clock[1]) * 1000000 + tonumber(clock[2])
end
