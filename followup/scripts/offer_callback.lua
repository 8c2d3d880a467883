-- A worker process got a callback for a job it is not waiting for. Every worker process sees
-- every callback; this records what it means for the job, the same whichever process runs it.
-- KEYS[1] job hash. ARGV: status, the callback as received, error (may be empty).
-- Returns: unknown, finished, noted (a failure: recorded as the job's last error) or stored (a
-- success: kept until the job finishes, so the attempt that waits for it or the next one to
-- begin completes the job without dispatching again).
local job = KEYS[1]
if redis.call('EXISTS', job) == 0 then
  return 'unknown'
end
local status = redis.call('HGET', job, 'status')
if status == 'success' or status == 'failed' then
  return 'finished'
end
if ARGV[1] ~= 'success' then
  if ARGV[3] ~= '' then
    redis.call('HSET', job, 'error', ARGV[3])
  end
  return 'noted'
end
redis.call('HSET', job, 'cb', ARGV[2])
return 'stored'
