-- The timer's step: touch every entry whose deadline has come. A touch makes Redis expire a due
-- key on the spot (and send its expired event at once) instead of when its active-expire cycle
-- gets round to it. A key that still exists had its TTL moved without our seeing it: re-index it.
-- KEYS[1] due zset, KEYS[2] values hash. ARGV[1] how many entries at most, ARGV[2] '1' if
-- PEXPIRETIME exists.
-- Returns {gone keys..., ''} followed by {the next deadline to wake for or -1, entries looked at}.
local due, values = KEYS[1], KEYS[2]
local exact = ARGV[2] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
local soonest = nil  -- an existing key at its deadline this very millisecond: look again in 1 ms
for _, key in ipairs(entries) do
  if redis.call('EXISTS', key) == 1 then
    local deadline
    if exact then
      deadline = redis.call('PEXPIRETIME', key)
    else
      local pttl = redis.call('PTTL', key)
      deadline = pttl > 0 and now + pttl or pttl
    end
    if deadline > 0 then
      redis.call('ZADD', due, deadline, key)
      if deadline <= now and (soonest == nil or deadline < soonest) then soonest = deadline end
    else
      redis.call('ZREM', due, key)
      redis.call('HDEL', values, key)
    end
  else
    out[#out + 1] = key
  end
end
out[#out + 1] = ''
local after = redis.call('ZRANGEBYSCORE', due, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local next_deadline = after[2] and tonumber(after[2]) or -1
if soonest and (next_deadline < 0 or soonest < next_deadline) then next_deadline = soonest end
out[#out + 1] = string.format('%.0f', next_deadline)
out[#out + 1] = tostring(#entries)
return out
