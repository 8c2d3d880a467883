-- An attempt stops waiting without success: from now on a success callback for the job is kept
-- for the next attempt (see offer_callback.lua).
-- KEYS[1] job hash. ARGV: attempt, error.
local job = KEYS[1]
local status = redis.call('HGET', job, 'status')
if status == 'success' or status == 'failed' then
  return 0
end
if redis.call('HGET', job, 'attempt') ~= ARGV[1] then
  return 0  -- a later attempt holds the job now
end
local t = redis.call('TIME')
redis.call('HSET', job, 'waiter_until', 0, 'error', ARGV[2],
           'updated', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return 1
