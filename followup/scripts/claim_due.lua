-- Claim expirations for enqueueing: of any number of listeners, exactly one gets each.
-- An indexed key (in due, or in limbo: see fire_due.lua) is claimed only once its deadline has
-- come (an expired event for a key whose entry lies in the future belongs to an earlier life of
-- the key, already claimed). A claimed
-- entry moves to the firing hash (the outbox) until its job is enqueued, so a listener killed in
-- between leaves it for the next one to enqueue.
-- KEYS[1] due zset, KEYS[2] values hash, KEYS[3] firing hash, KEYS[4] fired zset (key -> claim ms),
-- KEYS[5] limbo zset.
-- ARGV[1] '1' to also claim keys the index does not know (their expired event is all there is),
-- ARGV[2..] the keys. Returns a flat list: key, deadline, tagged value, for each key claimed.
local due, values, firing, fired, limbo = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local unknown_too = ARGV[1] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Unknown keys are told apart from keys claimed earlier by this window (a claimed key leaves it
-- sooner when it is indexed again, for a new life): longer than any lag a listener survives.
local window = 600000
redis.call('ZREMRANGEBYSCORE', fired, '-inf', now - window)
local out = {}
for i = 2, #ARGV do
  local key = ARGV[i]
  local score = redis.call('ZSCORE', due, key) or redis.call('ZSCORE', limbo, key)
  local deadline, tagged
  if score then
    deadline = tonumber(score)
    if deadline <= now + 1 then
      redis.call('ZREM', due, key)
      redis.call('ZREM', limbo, key)
      tagged = redis.call('HGET', values, key) or 'n'
      redis.call('HDEL', values, key)
    end
  elseif unknown_too and not redis.call('ZSCORE', fired, key) then
    deadline, tagged = now, 'n'
  end
  if tagged then
    local d = string.format('%.0f', deadline)
    redis.call('HSET', firing, d .. ':' .. key, string.format('%.0f', now) .. ':' .. tagged)
    redis.call('ZADD', fired, now, key)
    out[#out + 1] = key
    out[#out + 1] = d
    out[#out + 1] = tagged
  end
end
return out
