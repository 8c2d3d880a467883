-- Start attempt ARGV[1] of a job, unless that would run it twice.
-- KEYS[1] job hash. ARGV: attempt, lease (ms the waiter may hold the job), key, ttl (s).
-- Returns {verdict, detail}: done (finished before), stale (a later attempt began),
-- busy (a live worker runs this attempt), callback (a success arrived between attempts: the
-- stored callback), or go.
local job = KEYS[1]
local attempt = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local status = redis.call('HGET', job, 'status')
if status == 'success' or status == 'failed' then
  return {'done', status}
end
local current = tonumber(redis.call('HGET', job, 'attempt') or '0')
if attempt < current then
  return {'stale', tostring(current)}
end
if attempt == current then
  local held_until = tonumber(redis.call('HGET', job, 'waiter_until') or '0')
  if held_until > now then
    return {'busy', tostring(held_until - now)}
  end
end
redis.call('HSET', job, 'key', ARGV[3], 'attempt', attempt,
           'waiter_until', now + tonumber(ARGV[2]), 'updated', now)
redis.call('EXPIRE', job, tonumber(ARGV[4]))
local stored = redis.call('HGET', job, 'cb')
if stored then
  redis.call('HDEL', job, 'cb')
  return {'callback', stored}
end
return {'go', ''}
