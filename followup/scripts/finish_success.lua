-- Mark a job succeeded and announce it, in one step: of any number of racing workers exactly
-- one publishes the success event.
-- KEYS[1] job hash. ARGV: success channel, event JSON, ttl (s).
local job = KEYS[1]
local status = redis.call('HGET', job, 'status')
if status == 'success' or status == 'failed' then
  return 0
end
redis.call('HSET', job, 'status', 'success', 'waiter_until', 0)
redis.call('HDEL', job, 'cb')
redis.call('EXPIRE', job, tonumber(ARGV[3]))
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
