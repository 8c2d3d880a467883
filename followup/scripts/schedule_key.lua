-- followup.schedule(): write the key and its index entry in one step, so the follow-up is known
-- even if it is written and expires entirely while no listener runs.
-- KEYS[1] the key, KEYS[2] due zset, KEYS[3] values hash.
-- ARGV[1] TTL ms, ARGV[2] value, ARGV[3] tagged value for the index. Returns the deadline.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
local deadline = now + tonumber(ARGV[1])
redis.call('ZADD', KEYS[2], deadline, KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], ARGV[3])
return deadline
