-- Drop the index entries of deleted or renamed-away keys: they never fire.
-- KEYS[1] due zset, KEYS[2] values hash, KEYS[3] limbo zset. ARGV: the keys.
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[3], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return #ARGV
