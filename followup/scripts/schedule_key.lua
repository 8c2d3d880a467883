-- followup.schedule(): write the key and its index entry in one step, so the follow-up is known
-- even if it is written and expires entirely while no listener runs.
-- KEYS[1] the key, KEYS[2] due zset, KEYS[3] values hash, KEYS[4] limbo zset.
-- ARGV[1] TTL ms, ARGV[2] value, ARGV[3] tagged value for the index. Returns the deadline.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
-- The key's own expiry time where Redis can tell it (7.0+), so that the listener, which reads
-- the same, computes the same deadline (and jobId).
local ok, exact = pcall(redis.call, 'PEXPIRETIME', KEYS[1])
local deadline = (ok and exact > 0) and exact or now + tonumber(ARGV[1])
redis.call('ZADD', KEYS[2], deadline, KEYS[1])
redis.call('ZREM', KEYS[4], KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], ARGV[3])
return deadline
