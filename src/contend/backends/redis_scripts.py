"""Lua scripts of the Redis backend: each step of a call is one atomic script, one round trip.

Every key shares the hash tag ``{prefix}``, so on Redis Cluster all of them live in one slot and
the scripts may touch keys derived inside Lua (ARGV[1] is the key prefix ``{prefix}:``; KEYS[1]
is a key of the same slot, used for routing only).

Key layout (P = ``{prefix}:``):
  P e:<id>        hash  v (version), d (entity JSON)
  P op:<id>       hash  j (record JSON), s (current status), t (primary target), ts (targets csv)
  P ot:<tid>      set   record ids by target          P os:<status>  set  record ids by status
  P zb:<tid>      zset  zombies of a target by age    P zt  hash  target -> zombie count
  P zc            int   zombies in total              P due zset  record id -> removal due time
  P inflight      zset  staged record id -> deadline (ms, Redis time); past it, it is orphaned
  P wq:<tid>      zset  the open staging window       P wc:<tid>  window close time (ms)
  P lease:<tid>   the winner holding the target (PX lease)
  P out:<id>      a window member's outcome (W, or L|winner|priority)
  P sweeper       the sweeper lock (SET NX PX)        P seq  submission counter
  channel P released   a target's window was resolved or its lease released (payload: target)
"""

from __future__ import annotations

__all__ = [
    "ADD_ZOMBIE",
    "BUMP",
    "COMMIT",
    "DISCARD",
    "ENSURE",
    "JOIN",
    "OLDEST",
    "POP_DUE",
    "READ_SET",
    "REAP",
    "REMOVE",
    "RENEW",
    "RESOLVE",
    "SCHEDULE",
    "ZOMBIES_ALL",
]

_PRELUDE = """
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function unindex(op)
  local k = P .. 'op:' .. op
  local f = redis.call('HMGET', k, 'j', 's', 't', 'ts')
  redis.call('ZREM', P .. 'due', op)
  redis.call('ZREM', P .. 'inflight', op)
  if not f[1] then return false end
  redis.call('SREM', P .. 'os:' .. (f[2] or ''), op)
  if f[4] then
    for tid in string.gmatch(f[4], '[^,]+') do redis.call('SREM', P .. 'ot:' .. tid, op) end
  end
  local t = f[3] or ''
  if redis.call('ZREM', P .. 'zb:' .. t, op) == 1 then
    redis.call('DECR', P .. 'zc')
    if redis.call('HINCRBY', P .. 'zt', t, -1) <= 0 then redis.call('HDEL', P .. 'zt', t) end
  end
  redis.call('DEL', k)
  return f[1]
end
"""

_STAGING = """
local LEASE = tonumber(ARGV[2])
local OUT_TTL = tonumber(ARGV[3])
local SCALE = 1099511627776
local function reap(now)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'inflight', '-inf', now, 'LIMIT', 0, 16)
  for _, id in ipairs(ids) do redis.call('ZADD', P .. 'inflight', now + LEASE, id) end
  return ids
end
local function resolve_window(tid, now, always_publish)
  local wq = P .. 'wq:' .. tid
  local m = redis.call('ZRANGE', wq, 0, -1, 'WITHSCORES')
  redis.call('DEL', wq, P .. 'wc:' .. tid)
  if #m == 0 then return false end
  local winner = m[1]
  local wprio = 10 - math.floor(tonumber(m[2]) / SCALE)
  redis.call('SET', P .. 'lease:' .. tid, winner, 'PX', LEASE)
  local k = P .. 'op:' .. winner
  if redis.call('HGET', k, 's') == 'pending' then
    redis.call('HSET', k, 's', 'executing')
    redis.call('SMOVE', P .. 'os:pending', P .. 'os:executing', winner)
  end
  redis.call('ZADD', P .. 'inflight', now + LEASE, winner)
  local won = 'W'
  if #m > 2 then
    local others = {}
    for i = 3, #m, 2 do others[#others + 1] = m[i] end
    won = 'W|' .. #others + 1 .. '|' .. table.concat(others, ',')
  end
  redis.call('SET', P .. 'out:' .. winner, won, 'PX', OUT_TTL)
  local lost = 'L|' .. winner .. '|' .. wprio
  for i = 3, #m, 2 do redis.call('SET', P .. 'out:' .. m[i], lost, 'PX', OUT_TTL) end
  if always_publish or #m > 2 then redis.call('PUBLISH', P .. 'released', tid) end
  return winner
end
local function release(op, tid, now)
  local lease = P .. 'lease:' .. tid
  if redis.call('GET', lease) == op then redis.call('DEL', lease) end
  redis.call('ZREM', P .. 'inflight', op)
  if redis.call('EXISTS', P .. 'wq:' .. tid) == 1 then
    local close = tonumber(redis.call('GET', P .. 'wc:' .. tid) or '0')
    if close <= now and redis.call('EXISTS', lease) == 0 then resolve_window(tid, now, true) end
  end
end
-- Outcomes of `ops` once their window is resolved, plus the states of entities whose version
-- differs from the caller's copy (only when one of the caller's ops won).
local function outcomes(ops, ents)
  local o = {}
  local won = false
  for i, op in ipairs(ops) do
    local key = P .. 'out:' .. op
    local v = redis.call('GET', key)
    if v then redis.call('DEL', key) else v = 'X' end
    if string.sub(v, 1, 1) == 'W' then won = true end
    o[i] = v
  end
  local e = {}
  if won then
    for i = 1, #ents, 2 do
      local f = redis.call('HMGET', P .. 'e:' .. ents[i], 'v', 'd')
      if f[1] and tonumber(f[1]) ~= tonumber(ents[i + 1]) then e[#e + 1] = {ents[i], f[2]} end
    end
  end
  return o, e
end
-- Where a window stands for its members: still open, behind a lease, or resolved (now).
local function settle(tid, ops, ents, now)
  local wc = redis.call('GET', P .. 'wc:' .. tid)
  local first_out = redis.call('EXISTS', P .. 'out:' .. ops[1]) == 1
  if not first_out then
    if wc and tonumber(wc) > now then return {k = 'T', ms = tonumber(wc) - now} end
    local lease = P .. 'lease:' .. tid
    if redis.call('EXISTS', lease) == 1 then
      return {k = 'H', ms = redis.call('PTTL', lease)}
    end
    resolve_window(tid, now, false)
  end
  local o, e = outcomes(ops, ents)
  return {k = 'R', o = o, e = e}
end
"""

ENSURE = """
local k = ARGV[1] .. 'e:' .. ARGV[2]
if redis.call('EXISTS', k) == 0 then redis.call('HSET', k, 'v', ARGV[3], 'd', ARGV[4]) end
return redis.call('HMGET', k, 'v', 'd')
"""

# ARGV: P, n, then n x (id, expected, json); then m, then m x (target, op) fences.
COMMIT = """
local P = ARGV[1]
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local id, expected = ARGV[3 + 3 * i], tonumber(ARGV[4 + 3 * i])
  local v = redis.call('HGET', P .. 'e:' .. id, 'v')
  if v and tonumber(v) ~= expected then
    local cur = {}
    for j = 0, n - 1 do
      local f = redis.call('HMGET', P .. 'e:' .. ARGV[3 + 3 * j], 'v', 'd')
      cur[#cur + 1] = {ARGV[3 + 3 * j], f[2] or false}
    end
    return cjson.encode({k = 'C', id = id, v = tonumber(v), e = cur})
  end
end
local base = 3 + 3 * n
local m = tonumber(ARGV[base])
for j = 0, m - 1 do
  local tid, op = ARGV[base + 1 + 2 * j], ARGV[base + 2 + 2 * j]
  if redis.call('GET', P .. 'lease:' .. tid) ~= op then
    return cjson.encode({k = 'L', t = tid})
  end
end
for i = 0, n - 1 do
  redis.call('HSET', P .. 'e:' .. ARGV[3 + 3 * i], 'v', ARGV[4 + 3 * i] + 1, 'd', ARGV[5 + 3 * i])
end
return '{"k":"OK"}'
"""

# ARGV: P, n, n x (id, version, json), m, m x (target, op) fences.
BUMP = """
local P = ARGV[1]
local n = tonumber(ARGV[2])
local base = 3 + 3 * n
local m = tonumber(ARGV[base])
for j = 0, m - 1 do
  local tid, op = ARGV[base + 1 + 2 * j], ARGV[base + 2 + 2 * j]
  if redis.call('GET', P .. 'lease:' .. tid) ~= op then return tid end
end
for i = 0, n - 1 do
  redis.call('HSET', P .. 'e:' .. ARGV[3 + 3 * i], 'v', ARGV[4 + 3 * i], 'd', ARGV[5 + 3 * i])
end
return false
"""

# ARGV: P, LEASE, OUT_TTL, tid, window_ms, max_pending, n, n x (id, priority, json, targets),
#       then the rest: (entity id, local version) pairs.
JOIN = (
    _PRELUDE
    + _STAGING
    + """
local tid, window_ms, maxpend = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local n = tonumber(ARGV[7])
local now = now_ms()
local wq, wc = P .. 'wq:' .. tid, P .. 'wc:' .. tid
local card = redis.call('ZCARD', wq)
local ops, full = {}, {}
for i = 0, n - 1 do
  local id, prio, rec, ts = ARGV[8 + 4 * i], tonumber(ARGV[9 + 4 * i]), ARGV[10 + 4 * i],
    ARGV[11 + 4 * i]
  redis.call('HSET', P .. 'op:' .. id, 'j', rec, 's', 'pending', 't', tid, 'ts', ts)
  redis.call('SADD', P .. 'os:pending', id)
  for t in string.gmatch(ts, '[^,]+') do redis.call('SADD', P .. 'ot:' .. t, id) end
  if card >= maxpend then
    full[#full + 1] = id
  else
    local seq = redis.call('INCR', P .. 'seq') % SCALE
    redis.call('ZADD', wq, (10 - prio) * SCALE + seq, id)
    redis.call('ZADD', P .. 'inflight', now + window_ms + LEASE, id)
    card = card + 1
    ops[#ops + 1] = id
  end
end
local ents = {}
for i = 8 + 4 * n, #ARGV do ents[#ents + 1] = ARGV[i] end
local claimed = reap(now)
if #ops == 0 then return cjson.encode({k = 'R', o = {}, e = {}, f = full, c = claimed}) end
if not redis.call('GET', wc) then redis.call('SET', wc, now + window_ms) end
local life = window_ms + 4 * LEASE + 60000
redis.call('PEXPIRE', wq, life)
redis.call('PEXPIRE', wc, life)
local r = settle(tid, ops, ents, now)
r.f = full
r.c = claimed
return cjson.encode(r)
"""
)

# ARGV: P, LEASE, OUT_TTL, tid, n, n x id, then (entity id, local version) pairs.
RESOLVE = (
    _PRELUDE
    + _STAGING
    + """
local tid, n = ARGV[4], tonumber(ARGV[5])
local ops, ents = {}, {}
for i = 1, n do ops[i] = ARGV[5 + i] end
for i = 6 + n, #ARGV do ents[#ents + 1] = ARGV[i] end
local now = now_ms()
local r = settle(tid, ops, ents, now)
r.c = reap(now)
return cjson.encode(r)
"""
)

# ARGV: P, LEASE, OUT_TTL. Claims orphaned in-flight records (deadline passed) for the caller.
REAP = (
    _PRELUDE
    + _STAGING
    + """
return cjson.encode({c = reap(now_ms())})
"""
)

# ARGV: P, LEASE, OUT_TTL, op, release target ('' = none), written ('1' = delete the record).
DISCARD = (
    _PRELUDE
    + _STAGING
    + """
local op, tid = ARGV[4], ARGV[5]
if tid ~= '' then release(op, tid, now_ms()) end
if ARGV[6] == '1' then unindex(op) end
return 1
"""
)

# ARGV: P, LEASE, OUT_TTL, op, release target, json, status, tid, targets csv, cap.
ADD_ZOMBIE = (
    _PRELUDE
    + _STAGING
    + """
local op, rel, rec, status, tid, ts, cap = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8],
  ARGV[9], tonumber(ARGV[10])
if rel ~= '' then release(op, rel, now_ms()) end
local k = P .. 'op:' .. op
local old = redis.call('HGET', k, 's')
if old then redis.call('SREM', P .. 'os:' .. old, op) end
redis.call('HSET', k, 'j', rec, 's', status, 't', tid, 'ts', ts)
redis.call('SADD', P .. 'os:' .. status, op)
for t in string.gmatch(ts, '[^,]+') do redis.call('SADD', P .. 'ot:' .. t, op) end
redis.call('ZREM', P .. 'inflight', op)
local zb = P .. 'zb:' .. tid
if not redis.call('ZSCORE', zb, op) then
  redis.call('ZADD', zb, redis.call('INCR', P .. 'seq'), op)
  redis.call('INCR', P .. 'zc')
  redis.call('HINCRBY', P .. 'zt', tid, 1)
end
local evicted = {}
local over = redis.call('ZCARD', zb) - cap
if over > 0 then
  for _, old_id in ipairs(redis.call('ZRANGE', zb, 0, over - 1)) do
    local j = unindex(old_id)
    if j then evicted[#evicted + 1] = j end
  end
end
return cjson.encode({zc = tonumber(redis.call('GET', P .. 'zc') or '0'), ev = evicted,
                     zv = redis.call('INCR', P .. 'zv')})
"""
)

# ARGV: P, op, due (clock seconds), json, backstop ttl ms.
SCHEDULE = """
local P = ARGV[1]
local k = P .. 'op:' .. ARGV[2]
if redis.call('EXISTS', k) == 0 then return 0 end
if ARGV[4] ~= '' then redis.call('HSET', k, 'j', ARGV[4]) end
if ARGV[3] ~= '' then redis.call('ZADD', P .. 'due', ARGV[3], ARGV[2]) end
if ARGV[5] ~= '' then redis.call('PEXPIRE', k, ARGV[5]) end
return 1
"""

# ARGV: P, op.
REMOVE = (
    _PRELUDE
    + """
local j = unindex(ARGV[2])
return cjson.encode({j = j, zc = tonumber(redis.call('GET', P .. 'zc') or '0'),
                     zv = redis.call('INCR', P .. 'zv')})
"""
)

# ARGV: P, owner, lock ms, now (clock seconds), limit.
POP_DUE = """
local P = ARGV[1]
local lock = P .. 'sweeper'
local holder = redis.call('GET', lock)
if holder and holder ~= ARGV[2] then return {} end
redis.call('SET', lock, ARGV[2], 'PX', ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', ARGV[4], 'LIMIT', 0, ARGV[5])
if #ids > 0 then redis.call('ZREM', P .. 'due', unpack(ids)) end
return ids
"""

_READ = """
local function read_ids(key, is_zset, ids, out)
  for _, id in ipairs(ids) do
    local f = redis.call('HMGET', P .. 'op:' .. id, 'j', 's')
    if f[1] then
      out[#out + 1] = {f[1], f[2]}
    elseif is_zset then
      if redis.call('ZREM', key, id) == 1 and string.sub(key, #P + 1, #P + 3) == 'zb:' then
        local t = string.sub(key, #P + 4)
        redis.call('DECR', P .. 'zc')
        if redis.call('HINCRBY', P .. 'zt', t, -1) <= 0 then redis.call('HDEL', P .. 'zt', t) end
      end
    else
      redis.call('SREM', key, id)
    end
  end
end
"""

# ARGV: P, key suffix, 'z' for a sorted set / 's' for a set. Dangling ids (records that expired
# by the backstop TTL) are pruned from the index as they are met.
READ_SET = (
    "local P = ARGV[1]\n"
    + _READ
    + """
local key = P .. ARGV[2]
local out = {}
if ARGV[3] == 'z' then
  read_ids(key, true, redis.call('ZRANGE', key, 0, -1), out)
else
  read_ids(key, false, redis.call('SMEMBERS', key), out)
end
return cjson.encode(out)
"""
)

# ARGV: P.
ZOMBIES_ALL = (
    "local P = ARGV[1]\n"
    + _READ
    + """
local out = {}
for _, t in ipairs(redis.call('HKEYS', P .. 'zt')) do
  local key = P .. 'zb:' .. t
  read_ids(key, true, redis.call('ZRANGE', key, 0, -1), out)
end
return cjson.encode(out)
"""
)

# ARGV: P.
OLDEST = """
local P = ARGV[1]
local out = {}
for _, t in ipairs(redis.call('HKEYS', P .. 'zt')) do
  local ids = redis.call('ZRANGE', P .. 'zb:' .. t, 0, 0)
  if ids[1] then
    local f = redis.call('HMGET', P .. 'op:' .. ids[1], 'j', 's')
    if f[1] then out[#out + 1] = {f[1], f[2]} end
  end
end
return cjson.encode(out)
"""

# ARGV: P, LEASE, n held, n x (target, op), then in-flight op ids.
RENEW = """
local P = ARGV[1]
local lease = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost = {}
for i = 0, n - 1 do
  local key = P .. 'lease:' .. ARGV[4 + 2 * i]
  if redis.call('GET', key) == ARGV[5 + 2 * i] then
    redis.call('PEXPIRE', key, lease)
  else
    lost[#lost + 1] = ARGV[5 + 2 * i]
  end
end
for i = 4 + 2 * n, #ARGV do redis.call('ZADD', P .. 'inflight', 'XX', now + lease, ARGV[i]) end
return lost
"""
