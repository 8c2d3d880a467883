-- First attempts that are settled (succeeded, dead-lettered, skipped, or handed to a Celery
-- retry): their leases end, so no reaper puts them back.
-- KEYS[1] leases zset, KEYS[2] leased messages hash. ARGV: the jobIds.
if #ARGV == 0 then return 0 end
redis.call('ZREM', KEYS[1], unpack(ARGV))
return redis.call('HDEL', KEYS[2], unpack(ARGV))
