-- Add or replace one mapping rule; a new rule goes after every other (globs match in that order),
-- a replaced one keeps its place. Bumps the rules' version and announces it, in the same step.
-- KEYS[1] rules hash (pattern -> JSON), KEYS[2] order zset (pattern -> position), KEYS[3] version.
-- ARGV[1] pattern, ARGV[2] the rule as JSON, ARGV[3] change channel. Returns {version, created}.
local version = redis.call('INCR', KEYS[3])
local created = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'NX', version, ARGV[1])
redis.call('PUBLISH', ARGV[3], version)
return {version, created}
