-- A worker process got a callback for a job it is not waiting for. Every worker process sees
-- every callback, so this decides, once, what the callback means for the job.
-- KEYS[1] job hash. ARGV: status, the callback as received, error (may be empty).
-- Returns: unknown, finished, waiting (the worker that waits receives it itself), noted (a
-- failure between attempts: recorded, the next attempt dispatches anyway) or stored (a success
-- between attempts: the next attempt finds it and completes without dispatching again).
local job = KEYS[1]
if redis.call('EXISTS', job) == 0 then
  return 'unknown'
end
local status = redis.call('HGET', job, 'status')
if status == 'success' or status == 'failed' then
  return 'finished'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(redis.call('HGET', job, 'waiter_until') or '0') > now then
  return 'waiting'
end
if ARGV[1] ~= 'success' then
  if ARGV[3] ~= '' then
    redis.call('HSET', job, 'error', ARGV[3])
  end
  return 'noted'
end
redis.call('HSET', job, 'cb', ARGV[2])
return 'stored'
