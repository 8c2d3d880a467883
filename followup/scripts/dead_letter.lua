-- A job ran out of attempts: mark it failed, keep it in the dead-letter hash and announce it,
-- in one step, once.
-- KEYS[1] job hash, KEYS[2] dead-letter hash. ARGV: failure channel, event JSON,
-- dead-letter record JSON, job id, ttl (s).
local job = KEYS[1]
local status = redis.call('HGET', job, 'status')
if status == 'success' or status == 'failed' then
  return 0
end
redis.call('HSET', job, 'status', 'failed', 'waiter_until', 0)
redis.call('EXPIRE', job, tonumber(ARGV[5]))
redis.call('HSET', KEYS[2], ARGV[4], ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
