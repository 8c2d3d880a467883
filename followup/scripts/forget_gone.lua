-- Drop the index entries of keys that no longer exist (deleted while no listener heard it), the
-- check and the drop in one step: a key written again meanwhile keeps the entry of its new life.
-- KEYS[1] due zset, KEYS[2] values hash, KEYS[3] limbo zset. ARGV: the keys.
-- Returns how many entries were dropped.
local dropped = 0
for i = 1, #ARGV do
  if redis.call('EXISTS', ARGV[i]) == 0 then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[3], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
    dropped = dropped + 1
  end
end
return dropped
