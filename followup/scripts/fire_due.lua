-- The timer's step: touch every entry whose deadline has come. A touch makes Redis expire a due
-- key on the spot instead of when its active-expire cycle gets round to it; when it is this very
-- touch that expires the key (the keyspace shrinks by one), the expiration is claimed here and
-- now, exactly as claim_due.lua would on its expired event, which then finds nothing to claim.
-- Any other due entry is undecided until the events already on their way are read, so it moves
-- to limbo: a key gone before the touch was expired by Redis (its expired event claims it) or
-- deleted (its del event forgets it); a key that exists with another TTL had it moved, or
-- expired and was written again (its set event re-indexes it, its expired event claims the old
-- deadline first). The listener settles what no event settles (see listener.py).
-- KEYS[1] due zset, KEYS[2] values hash, KEYS[3] firing hash, KEYS[4] fired zset, KEYS[5] limbo zset.
-- ARGV[1] how many entries at most, ARGV[2] '1' if PEXPIRETIME exists.
-- Returns {n, key, deadline, tagged (claimed) x n, m, gone keys x m, k, moved keys x k,
-- next deadline to wake for or -1, entries looked at, Redis's now in ms, and its microseconds}.
local due, values, firing, fired, limbo = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local exact = ARGV[2] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stamp = string.format('%.0f', now)
local entries = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local claimed, gone, moved = {}, {}, {}
local soonest = nil  -- an existing key at its deadline this very millisecond: look again in 1 ms
for i = 1, #entries, 2 do
  local key, score = entries[i], entries[i + 1]
  local size_before = redis.call('DBSIZE')
  if redis.call('EXISTS', key) == 1 then
    local deadline
    if exact then
      deadline = redis.call('PEXPIRETIME', key)
    else
      local pttl = redis.call('PTTL', key)
      deadline = pttl > 0 and now + pttl or pttl
    end
    if deadline > 0 and deadline <= now then
      if soonest == nil or deadline < soonest then soonest = deadline end
    else
      redis.call('ZREM', due, key)
      redis.call('ZADD', limbo, score, key)
      moved[#moved + 1] = key
    end
  elseif redis.call('DBSIZE') < size_before then
    local d = string.format('%.0f', tonumber(score))
    local tagged = redis.call('HGET', values, key) or 'n'
    redis.call('ZREM', due, key)
    redis.call('HDEL', values, key)
    redis.call('HSET', firing, d .. ':' .. key, stamp .. ':' .. tagged)
    redis.call('ZADD', fired, now, key)
    claimed[#claimed + 1] = key
    claimed[#claimed + 1] = d
    claimed[#claimed + 1] = tagged
  else
    redis.call('ZREM', due, key)
    redis.call('ZADD', limbo, score, key)
    gone[#gone + 1] = key
  end
end
local out = {#claimed / 3}
for _, v in ipairs(claimed) do out[#out + 1] = v end
out[#out + 1] = #gone
for _, v in ipairs(gone) do out[#out + 1] = v end
out[#out + 1] = #moved
for _, v in ipairs(moved) do out[#out + 1] = v end
local after = redis.call('ZRANGEBYSCORE', due, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local next_deadline = after[2] and tonumber(after[2]) or -1
if soonest and (next_deadline < 0 or soonest < next_deadline) then next_deadline = soonest end
out[#out + 1] = string.format('%.0f', next_deadline)
out[#out + 1] = math.floor(#entries / 2)
out[#out + 1] = stamp
out[#out + 1] = tonumber(t[2]) % 1000
return out
