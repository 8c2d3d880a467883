-- followup.cancel(): delete the key and its index entry in one step. Returns 1 if either existed.
-- KEYS[1] the key, KEYS[2] due zset, KEYS[3] values hash, KEYS[4] limbo zset.
local existed = redis.call('DEL', KEYS[1])
local indexed = redis.call('ZREM', KEYS[2], KEYS[1]) + redis.call('ZREM', KEYS[4], KEYS[1])
redis.call('HDEL', KEYS[3], KEYS[1])
return (existed + indexed > 0) and 1 or 0
