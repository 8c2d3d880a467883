-- A worker takes jobs from the ready lists for their first attempt, and holds each under a lease
-- in the same step: a worker that dies holding jobs leaves them leased, and when the lease runs
-- out reap_leases.lua puts them back, so no job is ever only in a dead worker's memory.
-- KEYS[1] leases zset (jobId -> lease end, ms), KEYS[2] leased messages hash (jobId -> message),
-- KEYS[3..] the ready lists to take from, the first first (its queue has priority).
-- ARGV[1] how many jobs at most, ARGV[2] lease length in ms.
-- Returns the messages taken.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[2])
local want = tonumber(ARGV[1])
local out = {}
for i = 3, #KEYS do
  while #out < want do
    local message = redis.call('RPOP', KEYS[i])
    if not message then break end
    local id = string.match(message, '^([^\n]+)\n')
    if id then  -- anything else on the list was not put there by followup: dropped
      redis.call('ZADD', KEYS[1], until_ms, id)
      redis.call('HSET', KEYS[2], id, message)
      out[#out + 1] = message
    end
  end
end
return out
