-- Record (or forget) the schedule-index entries of keys whose TTL or value may have changed.
-- The key itself is the truth: its TTL now decides the entry, and its value is kept beside it,
-- because at expiry the value is gone.
-- KEYS[1] due zset (key -> deadline ms), KEYS[2] values hash (key -> tagged value), KEYS[3] limbo
-- zset, KEYS[4] fired zset.
-- ARGV[1] payload limit (bytes), ARGV[2] '1' if PEXPIRETIME exists, ARGV[3..] the keys.
-- Returns, per key: its deadline, 0 (no TTL: entry removed) or -1 (key gone: its expired or del
-- event decides).
local due, values, limbo, fired = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local limit = tonumber(ARGV[1])
local exact = ARGV[2] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 3, #ARGV do
  local key = ARGV[i]
  local deadline
  if exact then
    deadline = redis.call('PEXPIRETIME', key)
  else
    local pttl = redis.call('PTTL', key)
    deadline = pttl > 0 and now + pttl or pttl
  end
  if deadline > 0 then
    redis.call('ZADD', due, deadline, key)
    redis.call('ZREM', limbo, key)
    redis.call('ZREM', fired, key)  -- a new life of the key: its expiration is not claimed yet
    local kind = redis.call('TYPE', key)['ok']
    local tagged
    if kind == 'string' then
      local size = redis.call('STRLEN', key)
      if size > limit then tagged = 'o' .. size else tagged = 'v' .. redis.call('GET', key) end
    else
      tagged = 't' .. kind
    end
    redis.call('HSET', values, key, tagged)
    out[#out + 1] = deadline
  elseif deadline == -1 then
    redis.call('ZREM', due, key)
    redis.call('ZREM', limbo, key)
    redis.call('HDEL', values, key)
    out[#out + 1] = 0
  else
    out[#out + 1] = -1
  end
end
return out
