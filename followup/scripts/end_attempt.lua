-- An attempt failed and its retry is on the broker: another copy of this attempt's message (a
-- broker redelivery) must not run it again (begin_attempt.lua answers stale).
-- KEYS[1] job hash. ARGV: attempt, error.
local job = KEYS[1]
if redis.call('HGET', job, 'attempt') ~= ARGV[1] then
  return 0
end
redis.call('HSET', job, 'ended', ARGV[1], 'waiter_until', 0, 'error', ARGV[2])
return 1
