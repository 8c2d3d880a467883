-- Claims in the outbox whose listener never finished enqueueing them (it died, or lost Redis
-- between the claim and the enqueue): stamp them anew and return them, so that exactly one
-- listener enqueues each again, under the same jobId.
-- KEYS[1] firing hash. ARGV[1] age in ms beyond which a claim counts as abandoned.
-- Returns {field, tagged value, ... , the oldest stamp left younger than that or -1}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stamp = string.format('%.0f', now)
local entries = redis.call('HGETALL', KEYS[1])
local out, youngest_left = {}, -1
for i = 1, #entries, 2 do
  local field, value = entries[i], entries[i + 1]
  local colon = string.find(value, ':', 1, true)
  local claimed_at = tonumber(string.sub(value, 1, colon - 1))
  local tagged = string.sub(value, colon + 1)
  if now - claimed_at >= tonumber(ARGV[1]) then
    redis.call('HSET', KEYS[1], field, stamp .. ':' .. tagged)
    out[#out + 1] = field
    out[#out + 1] = tagged
  elseif youngest_left < 0 or claimed_at < youngest_left then
    youngest_left = claimed_at
  end
end
out[#out + 1] = string.format('%.0f', youngest_left)
return out
