-- An attempt was cut short (Redis went away mid-attempt): drop its lease so that the same
-- attempt can run again at once instead of waiting for the lease to run out.
-- KEYS[1] job hash. ARGV: attempt, error.
local job = KEYS[1]
local status = redis.call('HGET', job, 'status')
if status == 'success' or status == 'failed' then
  return 0
end
if redis.call('HGET', job, 'attempt') ~= ARGV[1] then
  return 0  -- a later attempt holds the job now
end
redis.call('HSET', job, 'waiter_until', 0, 'error', ARGV[2])
return 1
