-- Leases that ran out: their worker died (or stalled) holding the jobs. Each goes back to the
-- front of its ready list, to be taken first; the attempt's own record (begin_attempt.lua) keeps
-- a stalled worker and the next taker from both running it.
-- KEYS[1] leases zset, KEYS[2] leased messages hash. ARGV[1] the ready lists' key prefix,
-- ARGV[2] how many at most. Returns how many went back.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(expired) do
  local message = redis.call('HGET', KEYS[2], id)
  if message then
    local queue = string.match(message, '^[^\n]*\n([^\n]*)\n')
    redis.call('RPUSH', ARGV[1] .. queue, message)
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return #expired
