-- Take a job out of the dead-letter hash for a replay, and forget its finished state so that its
-- attempts start over under the same job id.
-- KEYS[1] dead-letter hash, KEYS[2] job hash. ARGV: job id. Returns the record, or nil.
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then
  return false
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return record
