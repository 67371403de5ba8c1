-- One GCRA check of a portcullis fleet limit, atomic in Redis.
-- KEYS[1]: the key's state, its theoretical arrival time (TAT) in milliseconds since the
--          epoch of Redis' clock, with an expiry at the time the state is a fresh key's again.
-- ARGV[1]: the emission interval (per / rate) in nanoseconds.
-- ARGV[2]: the burst: how many requests may arrive at once.
-- Returns {1, 0} when the request is allowed (and counted), {0, wait} when it is not, wait
-- being the milliseconds until one more request would be allowed, rounded up.
-- Redis before 5.0 refuses writes after TIME unless effects are replicated (the default from 5.0).
if redis.replicate_commands then
  redis.replicate_commands()
end
local interval = tonumber(ARGV[1]) / 1000000
local burst = tonumber(ARGV[2])
-- Redis' own clock: every instance of the fleet reads the same one.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local next_tat = tat + interval
local allowed_at = next_tat - burst * interval
if allowed_at > now then
  return {0, math.max(1, math.ceil(allowed_at - now))}
end
-- Stored to the microsecond, rounded up: rounding never admits more than the quota.
redis.call('SET', KEYS[1], string.format('%.3f', math.ceil(next_tat * 1000) / 1000), 'PX', math.max(1, math.ceil(next_tat - now)))
return {1, 0}
