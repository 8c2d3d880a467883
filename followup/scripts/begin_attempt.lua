-- Start attempt ARGV[1] of a job, unless that would run it twice.
-- KEYS[1] job hash. ARGV: attempt, lease (ms the attempt may hold the job), key, ttl (s).
-- Returns {verdict, detail}: done (finished before), stale (a later attempt began, or this one
-- ran to its end and its retry is on the broker), busy (a live worker runs this attempt: detail
-- is the ms its lease has left), callback (a success callback is already stored: detail), or go.
local job = KEYS[1]
local attempt = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local status = redis.call('HGET', job, 'status')
if status == 'success' or status == 'failed' then
  return {'done', status}
end
local current = tonumber(redis.call('HGET', job, 'attempt') or '0')
if attempt < current or tonumber(redis.call('HGET', job, 'ended') or '0') >= attempt then
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
-- Left in place: finish_success.lua removes it, so a blip before that loses nothing.
local stored = redis.call('HGET', job, 'cb')
if stored then
  return {'callback', stored}
end
return {'go', ''}
