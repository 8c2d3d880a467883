-- A job ran out of attempts: mark it failed, keep it in the dead-letter hash and announce it,
-- in one step, once. Unless a success callback arrived after all (kept by offer_callback.lua):
-- then the job succeeded, and that is what is recorded and announced.
-- KEYS[1] job hash, KEYS[2] dead-letter hash. ARGV: failure channel, failure event JSON,
-- dead-letter record JSON, job id, ttl (s), success channel, success event JSON.
-- Returns 0 (had ended before), 1 (dead-lettered) or 2 (succeeded).
local job = KEYS[1]
local status = redis.call('HGET', job, 'status')
if status == 'success' or status == 'failed' then
  return 0
end
if redis.call('HEXISTS', job, 'cb') == 1 then
  redis.call('HSET', job, 'status', 'success', 'waiter_until', 0)
  redis.call('HDEL', job, 'cb')
  redis.call('EXPIRE', job, tonumber(ARGV[5]))
  redis.call('PUBLISH', ARGV[6], ARGV[7])
  return 2
end
redis.call('HSET', job, 'status', 'failed', 'waiter_until', 0)
redis.call('EXPIRE', job, tonumber(ARGV[5]))
redis.call('HSET', KEYS[2], ARGV[4], ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
