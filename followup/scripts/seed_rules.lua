-- Seed the mapping rules from KEY_WEBHOOK_MAPPING. Mode 'missing' does it only when Redis has
-- never held rules (no version yet: rules deleted through the API stay deleted); mode 'replace'
-- replaces whatever is there. Every process seeds on start, so this must be one atomic step.
-- KEYS[1] rules hash, KEYS[2] order zset, KEYS[3] version.
-- ARGV[1] mode, ARGV[2] change channel, then pattern, JSON pairs in written order.
-- Returns the new version, or 0 when nothing was seeded.
if ARGV[1] ~= 'replace' and (redis.call('EXISTS', KEYS[3]) == 1 or redis.call('HLEN', KEYS[1]) > 0) then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
local version = tonumber(redis.call('GET', KEYS[3]) or '0')
for i = 3, #ARGV, 2 do
  version = version + 1
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], version, ARGV[i])
end
version = version + 1
redis.call('SET', KEYS[3], version)
redis.call('PUBLISH', ARGV[2], version)
return version
