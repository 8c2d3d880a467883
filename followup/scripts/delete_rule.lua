-- Remove one mapping rule, bump the rules' version and announce it, in one step.
-- KEYS[1] rules hash, KEYS[2] order zset, KEYS[3] version. ARGV[1] pattern, ARGV[2] change channel.
-- Returns the new version, or 0 when there was no such rule (nothing changed, nothing announced).
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
local version = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], version)
return version
