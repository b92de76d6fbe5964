"""The Lua scripts the Redis store runs inside Redis, where each is atomic."""

# KEYS[1]: the mode key. ARGV[1]: the target mode; ARGV[2]: "1" to force; ARGV[3]: what a
# missing key means; ARGV[4..]: the modes from which the target is a backward move.
# Replies {outcome, raw previous value or nil, seconds, microseconds}: the outcome numbers
# are base.Outcome, the time is Redis's own at the swap, so that audit entries written by
# different instances order by it. Single-key on purpose, so that it runs on Redis Cluster.
# A key of another type is an invalid value, as not_a_string() names it: a move replaces it.
COMPARE_AND_SET = """
local now = redis.call('TIME')
local kind = redis.call('TYPE', KEYS[1])['ok']
local previous = false
if kind == 'string' then
  previous = redis.call('GET', KEYS[1])
elseif kind ~= 'none' then
  previous = '<a Redis ' .. kind .. '>'
end
local current = previous or ARGV[3]
if current == ARGV[1] then
  return {0, previous, now[1], now[2]}
end
if ARGV[2] ~= '1' then
  for i = 4, #ARGV do
    if current == ARGV[i] then
      return {2, previous, now[1], now[2]}
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return {1, previous, now[1], now[2]}
"""

# KEYS[1]: the schedules, a sorted set scored by when each is next due. ARGV[1]: the lease in
# seconds; ARGV[2]: at most this many. Pushes each due schedule past the lease, in one script,
# so that exactly one caller gets it. Redis's clock judges "due" for every instance alike.
CLAIM_DUE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t, 'LIMIT', 0, tonumber(ARGV[2]))
for _, schedule in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', t + tonumber(ARGV[1]), schedule)
end
return due
"""
