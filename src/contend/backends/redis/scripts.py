"""The Lua scripts of the Redis backend: each step of a call is one atomic script, one round trip.

Each script runs on one bucket (``keys.py``): every key it touches starts with the bucket's tag,
so on Redis Cluster they live in one slot and the scripts may touch keys derived inside Lua
(ARGV[1] is the bucket's key prefix ``{prefix:bucket}:``; KEYS[1] is that prefix itself, used for
routing only). A target's keys are in its bucket; what is not a target's is one key per bucket.

Key layout (P = ``{prefix:bucket}:``):
  P e:<id>        hash  v (version), d (entity JSON)
  P op:<id>       hash  j (record JSON), s (status), t (primary target), ts (targets csv),
                        w (owner: the worker that staged it), p (priority), wd (wait
                        deadline, ms Redis time, wait policy), a (windows lost while waiting);
                        a zombie also f (function, lower case) and y (cleanup strategy)
  P ot:<tid>      set   record ids by target          P os:<status>  set  record ids by status
  P zb:<tid>      zset  zombies of a target by age    P zt  hash  target -> zombie count
  P zs:<status>   zset  zombies of a status, by completion time (us); the console's pages
  P zq:<tid>      zset  zombies of a target, by completion time (us)
  P zc            int   zombies in total              P due zset  record id -> removal due time
  P inflight      zset  staged record id -> deadline (ms, Redis time); past it, it is orphaned
  P wq:<tid>      zset  the open staging window       P wc:<tid>  window close time (ms)
  P lease:<tid>   the winner holding the target (PX at most its worker's heartbeat)
  P hb:<owner>    a worker's heartbeat (PX lease), renewed with its leases
  P out:<id>      a window member's outcome (W, L|winner|priority, D: its worker was gone,
                  E: it gave up waiting with nobody else in the window)
  P oc:<token>    a commit's outcome: 1 applied, v voided (settled as never applied)
  P rm:<id>       the token of the REMOVE that took the record (a resend counts it once)
  P r:<token>     the reply of a sweep batch, kept until acknowledged (replayed after a lost reply)
  P sweeper       the bucket's sweeper lock (SET NX PX)   P seq  submission counter
  channel {prefix}:released   a target's window was resolved or its lease released (payload: the
                       target; when waiters were carried on: target|winner|its priority|ids of
                       the calls decided, the only ones to wake)

Scripts never trust a key's content: a value that does not parse is repaired where the repair is
certain (a lease without TTL gets one, a window close time that is not a number is dropped,
counts are recomputed from the books) and reported back in the reply's ``b`` list, so the client
logs and counts it. Checks come before writes, so a script that stops on a bad key wrote nothing.
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
    "SETTLE",
    "TAKE_DUE",
    "ZOMBIES_ALL",
    "ZOMBIE_COUNTS",
    "ZOMBIE_PAGE",
]

_PRELUDE = """
local P = ARGV[1]
local bad = {}
local TERMINAL = {succeeded = true, failed = true, rejected = true, cancelled = true}
local function num(v) return tonumber(v or '') end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function zombie_total()
  return num(redis.call('GET', P .. 'zc')) or 0
end
-- The zombie count of target `t` is the size of its book; the total moves by `d`, or is summed
-- again from the per-target counts when it does not parse.
local function recount(t, d)
  local c = redis.call('ZCARD', P .. 'zb:' .. t)
  if c > 0 then redis.call('HSET', P .. 'zt', t, c) else redis.call('HDEL', P .. 'zt', t) end
  local cur = redis.call('GET', P .. 'zc')
  if cur and not num(cur) then
    bad[#bad + 1] = P .. 'zc'
    local total = 0
    for _, v in ipairs(redis.call('HVALS', P .. 'zt')) do total = total + (num(v) or 0) end
    redis.call('SET', P .. 'zc', total)
  else
    redis.call('INCRBY', P .. 'zc', d)
  end
end
-- Take a record out of every index; returns {id, json, status, target} or false if it was gone.
local function unindex(op)
  local k = P .. 'op:' .. op
  redis.call('ZREM', P .. 'due', op)
  redis.call('ZREM', P .. 'inflight', op)
  if redis.call('EXISTS', k) == 0 then return false end
  local f = redis.call('HMGET', k, 'j', 's', 't', 'ts')
  local s, t = f[2] or '', f[3] or ''
  redis.call('SREM', P .. 'os:' .. s, op)
  if f[4] then
    for tid in string.gmatch(f[4], '[^,]+') do redis.call('SREM', P .. 'ot:' .. tid, op) end
  end
  if redis.call('ZREM', P .. 'zb:' .. t, op) == 1 then
    recount(t, -1)
    redis.call('ZREM', P .. 'zs:' .. s, op)
    redis.call('ZREM', P .. 'zq:' .. t, op)
  end
  redis.call('DEL', k)
  return {op, f[1] or '', s, t}
end
-- An index entry whose record is gone (its key expired: the backstop) leaves the zombie indexes
-- of target `t`, and its book (and count) too.
local function prune(op, t)
  if redis.call('ZREM', P .. 'zb:' .. t, op) == 1 then recount(t, -1) end
  redis.call('ZREM', P .. 'zq:' .. t, op)
  for _, s in ipairs({'cancelled', 'failed', 'rejected'}) do
    redis.call('ZREM', P .. 'zs:' .. s, op)
  end
end
local function reply(r)
  if #bad > 0 then r.b = bad end
  return cjson.encode(r)
end
"""

_STAGING = """
local LEASE = tonumber(ARGV[2])
local OUT_TTL = tonumber(ARGV[3])
local SCALE = 1099511627776
local WINDOW_LIFE = 4 * LEASE + 60000
local HOT_MS = 1000
-- the prefix's release channel, {prefix}:released (P is the bucket's {prefix:bucket}:)
local CHAN = string.match(P, '^(.*):%d+}:$') .. '}:released'
local function reap(now)
  local ids = redis.call('ZRANGEBYSCORE', P .. 'inflight', '-inf', now, 'LIMIT', 0, 16)
  for _, id in ipairs(ids) do redis.call('ZADD', P .. 'inflight', now + LEASE, id) end
  return ids
end
-- A window member may win only while its in-flight deadline lies ahead and its worker's
-- heartbeat is alive: a dead worker's pending call must not take a fresh lease.
local function alive(id, w, now)
  local d = num(redis.call('ZSCORE', P .. 'inflight', id))
  if d and d < now then return false end
  if w and redis.call('EXISTS', P .. 'hb:' .. w) == 0 then return false end
  return true
end
-- The call holding target `tid` as 'id|priority', or nil.
local function holder(tid)
  local h = redis.call('GET', P .. 'lease:' .. tid)
  if not h then return nil end
  return h .. '|' .. (num(redis.call('HGET', P .. 'op:' .. h, 'p')) or 0)
end
-- Resolves the window of `tid`: the first member in score order (priority, aged for waiters,
-- then submission) that is alive and has not given up waiting wins and takes the lease. A
-- waiting loser (wait policy: its record has a wait deadline `wd`, still ahead) is carried
-- into the target's next window, one priority higher (at most 10) for each window it lost,
-- keeping its submission number, so ahead of every later call of equal priority; that window
-- closes when the lease is released. Other losers are told `L|winner|priority`.
local function resolve_window(tid, now, always_publish)
  local wq = P .. 'wq:' .. tid
  local m = redis.call('ZRANGE', wq, 0, -1, 'WITHSCORES')
  redis.call('DEL', wq, P .. 'wc:' .. tid)
  if #m == 0 then return false end
  local winner, wprio, owner
  local lost, carried, dead = {}, {}, {}
  for i = 1, #m, 2 do
    local id, score = m[i], num(m[i + 1]) or 0
    local f = redis.call('HMGET', P .. 'op:' .. id, 'w', 'wd', 'p', 'a')
    local wd = num(f[2])
    if wd and wd <= now then
      lost[#lost + 1] = id  -- it gave up waiting: it can neither win nor be carried
    elseif winner and not wd then
      lost[#lost + 1] = id
    elseif not alive(id, f[1], now) then
      redis.call('SET', P .. 'out:' .. id, 'D', 'PX', OUT_TTL)
      dead[#dead + 1] = id
    elseif winner then
      carried[#carried + 1] = {id, score, num(f[3]), num(f[4]) or 0}
    else
      winner, owner = id, f[1]
      wprio = num(f[3]) or (10 - math.floor(score / SCALE))
    end
  end
  if not winner then
    for _, id in ipairs(lost) do redis.call('SET', P .. 'out:' .. id, 'E', 'PX', OUT_TTL) end
    redis.call('PUBLISH', CHAN, tid)
    return false
  end
  -- The lease ends no later than its worker's heartbeat: a worker that dies blocks the target
  -- for at most one lease from its last renewal.
  local ttl = LEASE
  if owner then
    local h = redis.call('PTTL', P .. 'hb:' .. owner)
    if h > 0 and h < ttl then ttl = h end
  end
  redis.call('SET', P .. 'lease:' .. tid, winner, 'PX', ttl)
  local k = P .. 'op:' .. winner
  if redis.call('HGET', k, 's') == 'pending' then
    redis.call('HSET', k, 's', 'executing')
    redis.call('SMOVE', P .. 'os:pending', P .. 'os:executing', winner)
  end
  redis.call('ZADD', P .. 'inflight', now + LEASE, winner)
  for _, c in ipairs(carried) do
    local id, score, aged = c[1], c[2], c[4] + 1
    local eff = math.min(10, (c[3] or (10 - math.floor(score / SCALE))) + aged)
    redis.call('ZADD', wq, (10 - eff) * SCALE + math.fmod(score, SCALE), id)
    redis.call('HSET', P .. 'op:' .. id, 'a', aged)
  end
  if #carried > 0 then
    redis.call('SET', P .. 'wc:' .. tid, now)
    redis.call('PEXPIRE', wq, WINDOW_LIFE)
    redis.call('PEXPIRE', P .. 'wc:' .. tid, WINDOW_LIFE)
  end
  local contenders = 1 + #lost + #carried
  local won = 'W'
  if contenders > 1 then
    won = 'W|' .. contenders .. '|' .. #carried .. '|' .. table.concat(lost, ',')
  end
  redis.call('SET', P .. 'out:' .. winner, won, 'PX', OUT_TTL)
  local l = 'L|' .. winner .. '|' .. wprio
  for _, id in ipairs(lost) do redis.call('SET', P .. 'out:' .. id, l, 'PX', OUT_TTL) end
  if #carried > 0 then
    -- only the calls decided here need to look: the carried ones wait on, behind the winner
    local decided = {winner}
    for _, id in ipairs(lost) do decided[#decided + 1] = id end
    for _, id in ipairs(dead) do decided[#decided + 1] = id end
    local msg = tid .. '|' .. winner .. '|' .. wprio .. '|' .. table.concat(decided, ',')
    redis.call('PUBLISH', CHAN, msg)
  elseif always_publish or contenders > 1 or #dead > 0 then
    redis.call('PUBLISH', CHAN, tid)
  end
  return winner
end
-- `op` is done with target `tid`: its lease (if it holds it) goes, it leaves the window (if it
-- is still waiting there) and a next window whose time has come is resolved at once.
local function release(op, tid, now)
  local lease = P .. 'lease:' .. tid
  local wq = P .. 'wq:' .. tid
  if redis.call('GET', lease) == op then redis.call('DEL', lease) end
  redis.call('ZREM', P .. 'inflight', op)
  if redis.call('ZREM', wq, op) == 1 and redis.call('EXISTS', wq) == 0 then
    redis.call('DEL', P .. 'wc:' .. tid)
  end
  if redis.call('EXISTS', wq) == 1 and redis.call('EXISTS', lease) == 0 then
    local close = num(redis.call('GET', P .. 'wc:' .. tid)) or 0
    if close <= now then resolve_window(tid, now, true) end
  end
end
-- The last write of a call: release its target and end its record ('d' drop it, 'k' keep it
-- as succeeded), in the same script as the write itself.
local function end_call(op, rel, mode, now)
  if rel ~= '' then release(op, rel, now) end
  if mode == 'd' then
    unindex(op)
  elseif mode == 'k' then
    local k = P .. 'op:' .. op
    local s = redis.call('HGET', k, 's')
    if s and not TERMINAL[s] then
      redis.call('SMOVE', P .. 'os:' .. s, P .. 'os:succeeded', op)
      redis.call('HSET', k, 's', 'succeeded')
    end
    redis.call('ZREM', P .. 'inflight', op)
  end
end
-- The end of a winner's last write, when the same script has just checked that `op` holds the
-- lease of `tid` (so its record is in flight, executing, staged on `tid`, with the targets
-- `ts`): the lease goes, the record leaves its indexes ('d') or is kept as succeeded ('k'), and
-- a window waiting behind the lease is resolved at once.
local function end_won(op, tid, ts, mode)
  local k = P .. 'op:' .. op
  redis.call('DEL', P .. 'lease:' .. tid)
  redis.call('ZREM', P .. 'inflight', op)
  if mode == 'd' then
    redis.call('DEL', k)
    redis.call('SREM', P .. 'os:executing', op)
    for t in string.gmatch(ts, '[^,]+') do redis.call('SREM', P .. 'ot:' .. t, op) end
  elseif mode == 'k' then
    redis.call('SMOVE', P .. 'os:executing', P .. 'os:succeeded', op)
    redis.call('HSET', k, 's', 'succeeded')
  end
  if redis.call('EXISTS', P .. 'wq:' .. tid) == 1 then
    local now = now_ms()
    local close = num(redis.call('GET', P .. 'wc:' .. tid)) or 0
    if close <= now then resolve_window(tid, now, true) end
  end
end
-- Outcomes of `ops` once their window is resolved (read, not consumed: a resent RESOLVE gets the
-- same answer; `C`: carried into the next window, still waiting), plus the states of entities
-- whose version differs from the caller's copy.
local function outcomes(tid, ops, ents)
  local wq = P .. 'wq:' .. tid
  local o = {}
  local won, waiting = false, false
  for i, op in ipairs(ops) do
    local v = redis.call('GET', P .. 'out:' .. op)
    if not v then
      if redis.call('ZSCORE', wq, op) then
        v, waiting = 'C', true
      elseif redis.call('GET', P .. 'lease:' .. tid) == op then
        v = 'W'  -- it won at once, without a window (a resent join asks again)
      else
        v = 'X'
      end
    end
    if string.sub(v, 1, 1) == 'W' then won = true end
    o[i] = v
  end
  local e = {}
  if won then
    for i = 1, #ents, 2 do
      local f = redis.call('HMGET', P .. 'e:' .. ents[i], 'v', 'd')
      if f[1] and num(f[1]) ~= num(ents[i + 1]) then e[#e + 1] = {ents[i], f[2] or false} end
    end
  end
  return o, e, waiting
end
-- Where a window stands for its members: still open (every one of them is in it), behind a
-- lease, or resolved (now). A resolved reply for members still waiting (carried) says who
-- holds the target and for how long at most (`ms`, `h`), as a reply behind a lease does.
local function settle(tid, ops, ents, now)
  local wq = P .. 'wq:' .. tid
  local open = true
  for _, op in ipairs(ops) do
    if not redis.call('ZSCORE', wq, op) then
      open = false
      break
    end
  end
  local lease = P .. 'lease:' .. tid
  if open then
    local wck = P .. 'wc:' .. tid
    local wc = redis.call('GET', wck)
    local close = num(wc)
    if wc and not close then
      bad[#bad + 1] = wck
      redis.call('DEL', wck)
    end
    if close and close > now then return {k = 'T', ms = close - now} end
    local pttl = redis.call('PTTL', lease)
    if pttl == -1 then
      bad[#bad + 1] = lease
      redis.call('PEXPIRE', lease, LEASE)
      pttl = LEASE
    end
    if pttl > 0 then
      redis.call('PEXPIRE', wq, WINDOW_LIFE)
      return {k = 'H', ms = pttl, h = holder(tid)}
    end
    resolve_window(tid, now, false)
  end
  local o, e, waiting = outcomes(tid, ops, ents)
  local r = {k = 'R', o = o, e = e}
  if waiting then
    r.ms = math.max(redis.call('PTTL', lease), 1)
    r.h = holder(tid)
  end
  return r
end
"""

ENSURE = """
local k = ARGV[1] .. 'e:' .. ARGV[2]
if redis.call('EXISTS', k) == 0 then redis.call('HSET', k, 'v', ARGV[3], 'd', ARGV[4]) end
return redis.call('HMGET', k, 'v', 'd')
"""

# A commit is known by its token (the operation's id): `oc:<token>` says whether it applied,
# so a commit whose reply was lost can be settled, and a commit settled as "never applied"
# (voided) can no longer apply when it reaches Redis late.
_WRITE_HEAD = """
local token, oc_ttl = ARGV[4], ARGV[5]
local ock = P .. 'oc:' .. token
local o = redis.call('GET', ock)
if o == '1' then return reply({k = 'OK', again = 1}) end
if o then return reply({k = 'V'}) end
local n = tonumber(ARGV[6])
"""

_FENCES_AND_END = """
local m = tonumber(ARGV[base])
local e = base + 1 + 2 * m
local end_op, end_rel, end_mode, end_ts = ARGV[e], ARGV[e + 1], ARGV[e + 2], ARGV[e + 3]
local checked = false
for j = 0, m - 1 do
  local tid, op = ARGV[base + 1 + 2 * j], ARGV[base + 2 + 2 * j]
  if redis.call('GET', P .. 'lease:' .. tid) ~= op then return reply({k = 'L', t = tid}) end
  if tid == end_rel and op == end_op then checked = true end
end
local function finish()
  if checked then
    end_won(end_op, end_rel, end_ts, end_mode)
  elseif end_rel ~= '' or end_mode ~= '' then
    end_call(end_op, end_rel, end_mode, now_ms())
  end
end
"""

# ARGV: P, LEASE, OUT_TTL, token, oc ttl, n, n x (id, expected, json), m, m x (target, op)
#       fences, then the call's end: op, release target, mode ('d', 'k' or ''), its targets csv.
COMMIT = (
    _PRELUDE
    + _STAGING
    + _WRITE_HEAD
    + """
for i = 0, n - 1 do
  local id, expected = ARGV[7 + 3 * i], tonumber(ARGV[8 + 3 * i])
  local k = P .. 'e:' .. id
  local v = redis.call('HGET', k, 'v')
  if v and not num(v) then return reply({k = 'B', key = k, v = v}) end
  if v and num(v) ~= expected then
    local cur = {}
    for j = 0, n - 1 do
      local f = redis.call('HMGET', P .. 'e:' .. ARGV[7 + 3 * j], 'v', 'd')
      cur[#cur + 1] = {ARGV[7 + 3 * j], f[2] or false}
    end
    return reply({k = 'C', id = id, v = num(v), e = cur})
  end
end
local base = 7 + 3 * n
"""
    + _FENCES_AND_END
    + """
for i = 0, n - 1 do
  redis.call('HSET', P .. 'e:' .. ARGV[7 + 3 * i], 'v', ARGV[8 + 3 * i] + 1, 'd', ARGV[9 + 3 * i])
end
redis.call('SET', ock, '1', 'PX', oc_ttl)
finish()
return reply({k = 'OK'})
"""
)

# ARGV: P, LEASE, OUT_TTL, token, oc ttl, n, n x (id, version, json), m, m x (target, op)
#       fences, then the call's end (as COMMIT). An unguarded write (OCC off): no version check.
BUMP = (
    _PRELUDE
    + _STAGING
    + _WRITE_HEAD
    + """
local base = 7 + 3 * n
"""
    + _FENCES_AND_END
    + """
for i = 0, n - 1 do
  redis.call('HSET', P .. 'e:' .. ARGV[7 + 3 * i], 'v', ARGV[8 + 3 * i], 'd', ARGV[9 + 3 * i])
end
redis.call('SET', ock, '1', 'PX', oc_ttl)
finish()
return reply({k = 'OK'})
"""
)

# ARGV: P, token, oc ttl. After a lost reply: did the commit apply? If not, void it for good.
SETTLE = """
local k = ARGV[1] .. 'oc:' .. ARGV[2]
local o = redis.call('GET', k)
if o == '1' then return 1 end
if not o then redis.call('SET', k, 'v', 'PX', ARGV[3]) end
return 0
"""

# ARGV: P, LEASE, OUT_TTL, tid, window_ms, max_pending, owner, n, quick ('1': a call alone on
#       an idle target that was not contended for HOT_MS wins at once, without a window),
#       n x (id, priority, json, targets, wait), then the rest: (entity id, local version) pairs.
# `wait` is how long the call may wait for the target (ms, wait policy; '' = reject it when it
# loses): its record gets the deadline `wd` (Redis time), before which a loss carries it on.
JOIN = (
    _PRELUDE
    + _STAGING
    + """
local tid, window_ms, maxpend, owner = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local n, quick = tonumber(ARGV[8]), ARGV[9] == '1'
local now = now_ms()
local wq, wc = P .. 'wq:' .. tid, P .. 'wc:' .. tid
local lease, hot = P .. 'lease:' .. tid, P .. 'hot:' .. tid
if quick and n == 1 and redis.call('EXISTS', wq, lease, hot) == 0 then
  -- An idle target nobody contended lately: the call wins now, without a window. Calls of
  -- other workers arriving meanwhile wait behind its lease, and mark the target contended.
  local id, prio, rec, ts = ARGV[10], ARGV[11], ARGV[12], ARGV[13]
  redis.call('HSET', P .. 'op:' .. id, 'j', rec, 's', 'executing', 't', tid, 'ts', ts, 'w', owner,
    'p', prio)
  redis.call('SADD', P .. 'os:executing', id)
  for t in string.gmatch(ts, '[^,]+') do redis.call('SADD', P .. 'ot:' .. t, id) end
  redis.call('SET', lease, id, 'PX', LEASE)
  redis.call('ZADD', P .. 'inflight', now + LEASE, id)
  local e = {}
  for i = 15, #ARGV, 2 do
    local ek = P .. 'e:' .. ARGV[i]
    local v = redis.call('HGET', ek, 'v')
    if v and num(v) ~= num(ARGV[i + 1]) then
      e[#e + 1] = {ARGV[i], redis.call('HGET', ek, 'd') or false}
    end
  end
  return reply({k = 'R', o = {'W'}, e = e, f = {}, g = {}, j = {id}})
end
-- the worker is alive (it sent this join): its heartbeat in this bucket lives a lease from now
-- (a bucket where it had nothing in flight was not renewed), unless it holds this very target:
-- its lease renewals keep its heartbeat then, and a join must not outlive them (a killed
-- worker's call queued behind its own lease must not win once that lease runs out)
local held = redis.call('GET', lease)
local holder = held and redis.call('HGET', P .. 'op:' .. string.match(held, '^[^|]+'), 'w')
if holder == owner then
  redis.call('SET', P .. 'hb:' .. owner, '1', 'PX', LEASE, 'NX')
else
  redis.call('SET', P .. 'hb:' .. owner, '1', 'PX', LEASE)
end
local card = redis.call('ZCARD', wq)
if n > 1 or card > 0 or redis.call('EXISTS', lease) == 1 then
  redis.call('SET', hot, '1', 'PX', HOT_MS)  -- contended: windows of min_window_ms for a while
end
local ops, full, gone = {}, {}, {}
for i = 0, n - 1 do
  local b = 10 + 5 * i
  local id, prio, rec, ts = ARGV[b], tonumber(ARGV[b + 1]), ARGV[b + 2], ARGV[b + 3]
  local k = P .. 'op:' .. id
  local s = redis.call('HGET', k, 's')
  if s and TERMINAL[s] then
    gone[#gone + 1] = id
  elseif redis.call('ZSCORE', wq, id) or redis.call('EXISTS', P .. 'out:' .. id) == 1
    or redis.call('GET', lease) == id then
    ops[#ops + 1] = id  -- joined already (a resent join)
  elseif card >= maxpend then
    full[#full + 1] = id
  else
    redis.call('HSET', k, 'j', rec, 's', 'pending', 't', tid, 'ts', ts, 'w', owner, 'p', prio)
    local wait = num(ARGV[b + 4])
    if wait then redis.call('HSET', k, 'wd', now + wait) end
    redis.call('SADD', P .. 'os:pending', id)
    for t in string.gmatch(ts, '[^,]+') do redis.call('SADD', P .. 'ot:' .. t, id) end
    redis.call('ZADD', wq, (10 - prio) * SCALE + redis.call('INCR', P .. 'seq') % SCALE, id)
    redis.call('ZADD', P .. 'inflight', now + window_ms + LEASE, id)
    card = card + 1
    ops[#ops + 1] = id
  end
end
local ents = {}
for i = 10 + 5 * n, #ARGV do ents[#ents + 1] = ARGV[i] end
local claimed = reap(now)
if #ops == 0 then return reply({k = 'R', o = {}, e = {}, f = full, g = gone, c = claimed}) end
if not redis.call('GET', wc) then redis.call('SET', wc, now + window_ms) end
local life = window_ms + WINDOW_LIFE
redis.call('PEXPIRE', wq, life)
redis.call('PEXPIRE', wc, life)
local r = settle(tid, ops, ents, now)
r.f = full
r.g = gone
r.c = claimed
r.j = ops
return reply(r)
"""
)

# ARGV: P, LEASE, OUT_TTL, tid, n, n x id, w, w x withdrawn id, then (entity id, version) pairs.
# Withdrawn members (their callers were cancelled) leave the window before it is resolved.
RESOLVE = (
    _PRELUDE
    + _STAGING
    + """
local tid, n = ARGV[4], tonumber(ARGV[5])
local ops, ents = {}, {}
for i = 1, n do ops[i] = ARGV[5 + i] end
local w = tonumber(ARGV[6 + n])
local now = now_ms()
for i = 1, w do release(ARGV[6 + n + i], tid, now) end
for i = 7 + n + w, #ARGV do ents[#ents + 1] = ARGV[i] end
local r = settle(tid, ops, ents, now)
r.c = reap(now)
return reply(r)
"""
)

# ARGV: P, LEASE, OUT_TTL. Claims orphaned in-flight records (deadline passed) for the caller.
REAP = (
    _PRELUDE
    + _STAGING
    + """
return reply({c = reap(now_ms())})
"""
)

# ARGV: P, LEASE, OUT_TTL, op, release target ('' = none), mode ('d' drop the record, '' keep).
DISCARD = (
    _PRELUDE
    + _STAGING
    + """
end_call(ARGV[4], ARGV[5], ARGV[6], now_ms())
return reply({k = 'OK'})
"""
)

# ARGV: P, LEASE, OUT_TTL, op, release target, json, status, tid, targets csv, cap, due ('' =
#       none), key ttl ms ('' = none), settle token ('' = none), oc ttl, completion time (us),
#       function (lower case), priority, cleanup strategy.
# Books a zombie in one step: record, status index, books, cap, due time and key expiry. A
# record that is already terminal stays as it is (the first terminal state wins). With a settle
# token, a commit of this call whose reply was lost is settled first: if it applied, its record
# was ended by it and nothing is booked.
ADD_ZOMBIE = (
    _PRELUDE
    + _STAGING
    + """
local op, rel, rec, status, tid, ts, cap = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8],
  ARGV[9], tonumber(ARGV[10])
local due, ttl, token, oc_ttl = ARGV[11], ARGV[12], ARGV[13], ARGV[14]
local done, fn, prio, strategy = ARGV[15], ARGV[16], ARGV[17], ARGV[18]
local now = now_ms()
if token ~= '' then
  local ock = P .. 'oc:' .. token
  local o = redis.call('GET', ock)
  if o == '1' then
    if rel ~= '' then release(op, rel, now) end
    return reply({applied = 1, zc = zombie_total(), ev = {}, zv = redis.call('INCR', P .. 'zv')})
  end
  if not o then redis.call('SET', ock, 'v', 'PX', oc_ttl) end
end
if rel ~= '' then release(op, rel, now) end
local k = P .. 'op:' .. op
local old = redis.call('HGET', k, 's')
if old and TERMINAL[old] then
  redis.call('ZREM', P .. 'inflight', op)
  return reply({dup = 1, zc = zombie_total(), ev = {}, zv = redis.call('INCR', P .. 'zv')})
end
if old then redis.call('SREM', P .. 'os:' .. old, op) end
redis.call('HSET', k, 'j', rec, 's', status, 't', tid, 'ts', ts, 'f', fn, 'p', prio, 'y', strategy)
redis.call('SADD', P .. 'os:' .. status, op)
for t in string.gmatch(ts, '[^,]+') do redis.call('SADD', P .. 'ot:' .. t, op) end
redis.call('ZREM', P .. 'inflight', op)
local zb = P .. 'zb:' .. tid
if redis.call('ZADD', zb, 'NX', redis.call('INCR', P .. 'seq'), op) == 1 then
  recount(tid, 1)
  redis.call('ZADD', P .. 'zs:' .. status, done, op)
  redis.call('ZADD', P .. 'zq:' .. tid, done, op)
end
local evicted = {}
local over = redis.call('ZCARD', zb) - cap
if over > 0 then
  for _, old_id in ipairs(redis.call('ZRANGE', zb, 0, over - 1)) do
    local row = unindex(old_id)
    if row then evicted[#evicted + 1] = row end
  end
end
if due ~= '' and redis.call('EXISTS', k) == 1 then redis.call('ZADD', P .. 'due', due, op) end
if ttl ~= '' and redis.call('EXISTS', k) == 1 then redis.call('PEXPIRE', k, ttl) end
return reply({zc = zombie_total(), ev = evicted, zv = redis.call('INCR', P .. 'zv')})
"""
)

# ARGV: P, op, due ('' = keep), json ('' = keep), key ttl ms ('' = keep), status, tid, targets.
# Rewrites a record a handler changed and (re)books its removal; a record not yet in Redis (a
# retained success of an unstaged call) is written with its indexes.
SCHEDULE = (
    _PRELUDE
    + """
local op, due, rec, ttl, status, tid, ts = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
  ARGV[7], ARGV[8]
local k = P .. 'op:' .. op
if redis.call('EXISTS', k) == 0 then
  if rec == '' or status == '' then return reply({k = 0}) end
  redis.call('HSET', k, 'j', rec, 's', status, 't', tid, 'ts', ts)
  redis.call('SADD', P .. 'os:' .. status, op)
  for t in string.gmatch(ts, '[^,]+') do redis.call('SADD', P .. 'ot:' .. t, op) end
elseif rec ~= '' then
  redis.call('HSET', k, 'j', rec)
end
if due ~= '' then redis.call('ZADD', P .. 'due', due, op) end
if ttl ~= '' then redis.call('PEXPIRE', k, ttl) end
return reply({k = 1})
"""
)

# ARGV: P, op, token (one per removal, the same when it is sent again), marker ttl ms.
# A removal marks the record's id with its token, so a removal sent again after a lost reply can
# tell "you took it" (count it once) from "it was gone already" (someone else counted it).
REMOVE = (
    _PRELUDE
    + """
local op, token, ttl = ARGV[2], ARGV[3], ARGV[4]
local mk = P .. 'rm:' .. op
local row = unindex(op)
local mine = false
if row then
  redis.call('SET', mk, token, 'PX', ttl)
else
  mine = redis.call('GET', mk) == token
end
return reply({r = row, mine = mine, zc = zombie_total(), zv = redis.call('INCR', P .. 'zv')})
"""
)

_LOCK = """
local lock = P .. 'sweeper'
local holder = redis.call('GET', lock)
if holder and holder ~= ARGV[2] then return reply({rows = {}, ids = {}}) end
redis.call('SET', lock, ARGV[2], 'PX', ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', ARGV[4], 'LIMIT', 0, ARGV[5])
"""

# ARGV: P, owner, lock ms, now (clock seconds), limit, claim until (clock seconds).
# Due ids for a sweep that hands records to removal sinks first: they stay scheduled (claimed
# until `claim until`), so a sweep that stops half-way loses none of them.
POP_DUE = (
    _PRELUDE
    + _LOCK
    + """
for _, id in ipairs(ids) do redis.call('ZADD', P .. 'due', ARGV[6], id) end
return reply({ids = ids})
"""
)

# ARGV: P, owner, lock ms, now (clock seconds), limit, token, reply ttl ms.
# Takes a due batch out of every index in one step. The reply is kept under the token until the
# client acknowledges it, so a batch whose reply was lost is replayed and counted, never dropped.
TAKE_DUE = (
    _PRELUDE
    + """
local rk = P .. 'r:' .. ARGV[6]
local cached = redis.call('GET', rk)
if cached then return cached end
"""
    + _LOCK
    + """
local rows = {}
for _, id in ipairs(ids) do
  local row = unindex(id)
  if row then rows[#rows + 1] = row end
end
local out = reply({rows = rows, zc = zombie_total(), zv = redis.call('INCR', P .. 'zv')})
if #rows > 0 then redis.call('SET', rk, out, 'PX', ARGV[7]) end
return out
"""
)

_READ = """
-- Rows {id, json, status} of the ids in an index; ids whose record is gone (expired by the
-- backstop TTL) are pruned from the index as they are met.
local function read_ids(key, book, ids, out)
  for _, id in ipairs(ids) do
    local f = redis.call('HMGET', P .. 'op:' .. id, 'j', 's')
    if f[1] then
      out[#out + 1] = {id, f[1], f[2] or false}
    elseif book then
      prune(id, book)
    else
      redis.call('SREM', key, id)
    end
  end
end
"""

# ARGV: P, key suffix, 'z' for a target's zombie book (then ARGV[4] is the target) or 's' for a
# set.
READ_SET = (
    _PRELUDE
    + _READ
    + """
local key = P .. ARGV[2]
local out = {}
if ARGV[3] == 'z' then
  read_ids(key, ARGV[4], redis.call('ZRANGE', key, 0, -1), out)
else
  read_ids(key, false, redis.call('SMEMBERS', key), out)
end
return reply({rows = out})
"""
)

# ARGV: P.
ZOMBIES_ALL = (
    _PRELUDE
    + _READ
    + """
local out = {}
for _, t in ipairs(redis.call('HKEYS', P .. 'zt')) do
  local key = P .. 'zb:' .. t
  read_ids(key, t, redis.call('ZRANGE', key, 0, -1), out)
end
return reply({rows = out})
"""
)

# ARGV: P.
OLDEST = (
    _PRELUDE
    + """
local out = {}
for _, t in ipairs(redis.call('HKEYS', P .. 'zt')) do
  local ids = redis.call('ZRANGE', P .. 'zb:' .. t, 0, 0)
  if ids[1] then
    local f = redis.call('HMGET', P .. 'op:' .. ids[1], 'j', 's')
    if f[1] then out[#out + 1] = {ids[1], f[1], f[2] or false} end
  end
end
return reply({rows = out})
"""
)

# ARGV: P, LEASE, owner, n held, n x (target, op), then in-flight op ids.
# The heartbeat, the leases and the in-flight deadlines move together, so none outlives another.
RENEW = (
    _PRELUDE
    + """
local lease = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
local now = now_ms()
redis.call('SET', P .. 'hb:' .. ARGV[3], '1', 'PX', lease)
local lost = {}
for i = 0, n - 1 do
  local key = P .. 'lease:' .. ARGV[5 + 2 * i]
  local op = ARGV[6 + 2 * i]
  if redis.call('GET', key) == op then
    redis.call('PEXPIRE', key, lease)
  elseif not TERMINAL[redis.call('HGET', P .. 'op:' .. op, 's') or 'succeeded'] then
    -- lost only if its call still runs: a lease its commit (or its end) released is not
    lost[#lost + 1] = op
  end
end
for i = 5 + 2 * n, #ARGV do redis.call('ZADD', P .. 'inflight', 'XX', now + lease, ARGV[i]) end
return reply({lost = lost})
"""
)

_PAGES = """
-- a < b, byte by byte (Redis orders members of equal score so; Lua's `<` follows the locale)
local function lt(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
-- A score (integer microseconds) as Redis reads it back exactly (Lua prints 14 digits).
local function us(x) return string.format('%.0f', x) end
-- The rank in `key` of the first entry after (score, id), whether or not that entry is still
-- there: its own rank if it is, else a binary search among the entries of equal score.
local function rank_after(key, score, id)
  if num(redis.call('ZSCORE', key, id)) == score then
    return redis.call('ZRANK', key, id) + 1
  end
  local lo = redis.call('ZCOUNT', key, '-inf', '(' .. us(score))
  local hi = redis.call('ZCOUNT', key, '-inf', us(score))
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local m = redis.call('ZRANGE', key, mid, mid)[1]
    if m and not lt(id, m) then lo = mid + 1 else hi = mid end
  end
  return lo
end
"""

# ARGV: P, n, n x index key suffix, cursor score ('' = from the start), cursor id, rows wanted,
#       entries to examine at most, status ('' = any), function needle (lower case, '' = any),
#       priority ('' = any), completed at or after (us, '' = any), at or before (us, '' = any),
#       'i' for every entry examined, as (id, 1 if it matches else 0, status, -, score), without
#       the record's JSON (a page merged over buckets reads the JSON of those it shows after).
# One page of zombies in completion order, merged over the indexes given (each ordered by
# completion time, then id): examines entries from the cursor on, up to the limit, and returns
# the matching records, the cursor of the last entry examined (none at the end), how many were
# examined and the size of the indexes. Reads only: an entry whose record is gone is pruned.
ZOMBIE_PAGE = (
    _PRELUDE
    + _PAGES
    + """
local n = tonumber(ARGV[2])
local b = 3 + n
local cscore, cid, want, budget = num(ARGV[b]), ARGV[b + 1], tonumber(ARGV[b + 2]),
  tonumber(ARGV[b + 3])
local status, needle, prio = ARGV[b + 4], ARGV[b + 5], ARGV[b + 6]
local after, before = num(ARGV[b + 7]), num(ARGV[b + 8])
local ids_only = ARGV[b + 9] == 'i'
local CHUNK = math.max(1, math.min(budget, 128))
local srcs = {}
for i = 1, n do
  local key = P .. ARGV[2 + i]
  local pos = 0
  if cscore then pos = rank_after(key, cscore, cid) end
  if after then pos = math.max(pos, redis.call('ZCOUNT', key, '-inf', '(' .. us(after))) end
  local t = string.match(ARGV[2 + i], '^zq:(.*)$')
  srcs[i] = {key = key, pos = pos, buf = {}, at = 1, done = false, target = t}
end
local function head(src)
  if src.at > #src.buf then
    if src.done then return nil end
    src.buf = redis.call('ZRANGE', src.key, src.pos, src.pos + CHUNK - 1, 'WITHSCORES')
    src.at = 1
    src.pos = src.pos + #src.buf / 2
    if #src.buf < 2 * CHUNK then src.done = true end
    if #src.buf == 0 then return nil end
  end
  return src.buf[src.at], num(src.buf[src.at + 1])
end
local function next_source()
  local best, bid, bscore
  for _, src in ipairs(srcs) do
    local id, score = head(src)
    if id and (not best or score < bscore or (score == bscore and lt(id, bid))) then
      best, bid, bscore = src, id, score
    end
  end
  if best and before and bscore > before then return nil end
  return best, bid, bscore
end
local rows, scanned = {}, 0
local last_id, last_score = cid, cscore
while #rows < want and scanned < budget do
  local src, id, score = next_source()
  if not src then break end
  src.at = src.at + 2
  scanned = scanned + 1
  last_id, last_score = id, score
  local f = redis.call('HMGET', P .. 'op:' .. id, 'j', 's', 'p', 'f')
  if not f[1] then
    redis.call('ZREM', src.key, id)
    src.pos = src.pos - 1
    if src.target then prune(id, src.target) end
  elseif (status == '' or f[2] == status)
    and (prio == '' or f[3] == prio)
    and (needle == '' or string.find(f[4] or '', needle, 1, true)) then
    if ids_only then
      rows[#rows + 1] = {id, 1, f[2] or false, false, us(score)}
    else
      rows[#rows + 1] = {id, f[1], f[2] or false, false, us(score)}
    end
  elseif ids_only then
    rows[#rows + 1] = {id, 0, f[2] or false, false, us(score)}
  end
end
local total = 0
for _, src in ipairs(srcs) do total = total + redis.call('ZCARD', src.key) end
local r = {rows = rows, n = scanned, total = total, zc = zombie_total()}
r.zv = num(redis.call('GET', P .. 'zv')) or 0
if next_source() and last_id ~= '' then r.after = {us(last_score), last_id} end
return reply(r)
"""
)

# ARGV: P, index key suffix, start rank, count.
# Zombies by cleanup strategy among `count` entries of an index from `start` on.
ZOMBIE_COUNTS = (
    _PRELUDE
    + """
local ids = redis.call('ZRANGE', P .. ARGV[2], ARGV[3], ARGV[3] + ARGV[4] - 1)
local counts = {}
for _, id in ipairs(ids) do
  local y = redis.call('HGET', P .. 'op:' .. id, 'y')
  if y then counts[y] = (counts[y] or 0) + 1 end
end
return reply({counts = counts, n = #ids})
"""
)
