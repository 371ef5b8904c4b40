"""Upload progress in Redis: a few well-named atomic operations, Lua where keys change together.

Keys of one upload (file ids are validated, so they are safe in key names):
  ft:up:<id>          hash: owner, total, state, received, next, name, sha256_expected,
                      created_at, updated_at, persisted_at, sha256, error, completed_at,
                      provisional (1 until the first chunk is committed)
  ft:up:<id>:chunks   sorted set of stored chunks, score START, member "START:END:CRC"
  ft:up:<id>:claims   hash token -> "START:END:CRC:LEASE_UNTIL" of chunks being written now
  ft:activity         sorted set file_id -> last activity, of uploads not yet complete
  ft:assembling       sorted set file_id -> when it became `assembling`
  ft:owner:<owner_id> sorted set file_id -> created_at: one owner's uploads and files (the list)
  ft:files:all        sorted set file_id -> created_at: everybody's (the admins' list)
  ft:files:indexed    set once the two indexes above have been rebuilt from disk and Redis
  ft:disk:reserved    hash token -> "BYTES:LEASE_UNTIL": disk space held by chunks being written
  ft:quota:<owner>    hash: uploads, bytes: the owner's open (not complete) uploads and their
                      declared bytes. An upload counted there has `charged` (its total) in its
                      hash; whatever ends it (complete, delete, cleanup, a first chunk that
                      failed) uncharges it once, through `charged`.
  ft:rate:create:<owner>  hash: tokens, at: the owner's bucket of upload creations
  ft:metrics:assembly hash "<outcome>:<bucket>" -> count, "<outcome>:sum" -> seconds: the
                      workers' assembly durations, read by GET /metrics

Uploads created through tus (`create`) also keep `tus_*` fields in their hash: the raw
Upload-Metadata, `tus_deferred` (1 while the length is not yet known; `total` then holds
the largest allowed size) and `tus_concat` (partial, or the final's list of parts).

Stored chunks never overlap (the claim refuses overlaps with stored and in-flight
chunks), so one ZREVRANGEBYSCORE finds the only stored chunk that could overlap a
new one. `next` (first missing byte) advances over contiguous chunks on commit.
Numbers going back to Redis from Lua are formatted with %d: Lua's default
formatting would turn large byte offsets into floats.

Locks (leases with a TTL, renewed by their holder; see `Lease`):
  ft:lock:assemble:<id>  the worker assembling an upload
  ft:lock:job:<name>     a periodic job (cleanup, persist, files-index)

No other module names these keys: callers get operations (restore from a record, take a
lease, ...). Three small modules own keys of their own, each alone: core/login_throttle.py
(`ft:login:*`), core/workers_registry.py (`ft:workers`) and core/jobs.py (`ft:task:*`, ids of
tasks the API issued); celeryconfig.py prefixes Celery's and redbeat's keys (`ft:celery:`,
`ft:redbeat`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.commands.core import AsyncScript
from redis.exceptions import LockError

from core.records import Chunk, FileMeta, Manifest, TusFields, Upload, UploadState
from core.redis_mux import SharedConnection

__all__ = ["Chunk", "Upload", "UploadState"]  # records re-exported: callers read them from here

ACTIVITY_KEY = "ft:activity"
ASSEMBLING_KEY = "ft:assembling"
DISK_RESERVED_KEY = "ft:disk:reserved"


QUOTA_PREFIX = "ft:quota:"
ALL_FILES_KEY = "ft:files:all"
FILES_INDEXED_KEY = "ft:files:indexed"
OWNER_FILES_PREFIX = "ft:owner:"
CREATE_RATE_PREFIX = "ft:rate:create:"


def upload_key(file_id: str) -> str:
    return f"ft:up:{file_id}"


def owner_files_key(owner_id: str) -> str:
    return f"{OWNER_FILES_PREFIX}{owner_id}"


def _indexed_keys(file_id: str) -> list[str]:
    """An upload's keys and the everybody index (KEYS[6]); owner indexes are named from the
    hash's `owner` inside the scripts, with OWNER_FILES_PREFIX passed as an argument."""
    return [*_keys(file_id), ALL_FILES_KEY]


def quota_key(owner: str) -> str:
    return f"{QUOTA_PREFIX}{owner}"


def create_rate_key(owner: str) -> str:
    return f"{CREATE_RATE_PREFIX}{owner}"


def _keys(file_id: str) -> list[str]:
    base = upload_key(file_id)
    return [base, f"{base}:chunks", f"{base}:claims", ACTIVITY_KEY, ASSEMBLING_KEY]


_PRELUDE = """
local up, chunks, claims, activity, assembling = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local function summary(status, extra)
  local f = redis.call('HMGET', up, 'state', 'received', 'total', 'next')
  return {status, f[1] or '', f[2] or '0', f[3] or '0', f[4] or '0', extra or ''}
end
local function chunk_end(member)
  return tonumber(string.match(member, '^%d+:(%d+):'))
end
"""

# Uncharge an upload from its owner's quota, once. The quota key is named from the owner stored
# in the upload's hash, so scripts that end an upload need not be told it (one Redis, no cluster).
_UNCHARGE = (
    """
local function uncharge(key)
  local f = redis.call('HMGET', key, 'owner', 'charged')
  if not f[2] then return end
  local quota = '"""
    + QUOTA_PREFIX
    + """' .. f[1]
  local uploads = redis.call('HINCRBY', quota, 'uploads', -1)
  -- formatted, not '-' .. charged: Redis refuses '-0' as an integer (an empty upload)
  local bytes = redis.call('HINCRBY', quota, 'bytes', string.format('%d', -tonumber(f[2])))
  -- Counters lost with Redis while the upload came back from disk: never below zero.
  if uploads <= 0 and bytes <= 0 then
    redis.call('DEL', quota)
  elseif uploads < 0 or bytes < 0 then
    redis.call('HSET', quota, 'uploads', math.max(uploads, 0), 'bytes', string.format('%d', math.max(bytes, 0)))
  end
  redis.call('HDEL', key, 'charged')
end
"""
)

# Create an upload for its owner, if the owner's limits allow: the one place where uploads are
# created (the first chunk's claim, and `UploadRepository.open_upload` for protocols that create
# an upload before any byte, such as tus). Limits of 0 are off. KEYS: the upload's keys, then the
# owner's quota and creation-rate keys. Returns nil when created, else a refusal for `summary`.
_OPEN_UPLOAD = """
local function open_upload(quota, rate, owned, all_files, file_id, owner, total, now, provisional, limits)
  local max_uploads, max_bytes, per_minute = tonumber(limits[1]), tonumber(limits[2]), tonumber(limits[3])
  local q = redis.call('HMGET', quota, 'uploads', 'bytes')
  local uploads, bytes = tonumber(q[1] or '0'), tonumber(q[2] or '0')
  if max_uploads > 0 and uploads + 1 > max_uploads then return {'too_many_uploads', max_uploads} end
  if max_bytes > 0 and bytes + tonumber(total) > max_bytes then
    return {'quota_exceeded', string.format('%d', math.max(max_bytes - bytes, 0))}
  end
  if per_minute > 0 then
    -- a bucket of `per_minute` creations, refilled evenly over a minute
    local b = redis.call('HMGET', rate, 'tokens', 'at')
    local t = tonumber(now)
    local tokens = math.min(per_minute, tonumber(b[1] or per_minute) + (t - tonumber(b[2] or now)) * per_minute / 60)
    if tokens < 1 then return {'rate_limited', math.ceil((1 - tokens) * 60 / per_minute)} end
    redis.call('HSET', rate, 'tokens', tostring(tokens - 1), 'at', now)
    redis.call('EXPIRE', rate, 120)
  end
  redis.call('HSET', up, 'owner', owner, 'total', total, 'state', 'uploading', 'received', '0',
             'next', '0', 'created_at', now, 'updated_at', now, 'provisional', provisional, 'charged', total)
  redis.call('HINCRBY', quota, 'uploads', 1)
  redis.call('HINCRBY', quota, 'bytes', total)
  redis.call('ZADD', activity, now, file_id)
  redis.call('ZADD', owned, now, file_id)  -- the files list
  redis.call('ZADD', all_files, now, file_id)
  return nil
end
"""

# Disk holds of chunks being written, shared by every API process: KEY (a hash) maps a chunk's
# token to `bytes:lease_until`; KEY:total counts their bytes and KEY:leases orders them by lease,
# so that a claim reads what others hold in O(1) and sweeps only lapsed holds (of processes that
# died mid-chunk), instead of walking every hold: with a thousand chunks in flight that walk was
# most of Redis's time. `disk_drop` ends one hold; the claim and `reserve_disk` place them.
_DISK_HOLDS = """
local function disk_drop(key, token)
  local held = redis.call('HGET', key, token)
  if not held then return end
  redis.call('HDEL', key, token)
  if redis.call('ZREM', key .. ':leases', token) == 1 then
    local bytes = tonumber(string.match(held, '^(%d+):'))
    if redis.call('DECRBY', key .. ':total', bytes) < 0 then redis.call('SET', key .. ':total', 0) end
  end
end
local function hold_disk(key, token, want, now, lease_until)
  local lapsed = redis.call('ZRANGEBYSCORE', key .. ':leases', '-inf', '(' .. now, 'LIMIT', 0, 100)
  for _, other in ipairs(lapsed) do disk_drop(key, other) end
  disk_drop(key, token)
  local others = tonumber(redis.call('GET', key .. ':total') or '0')
  redis.call('HSET', key, token, want .. ':' .. lease_until)
  redis.call('ZADD', key .. ':leases', lease_until, token)
  redis.call('INCRBY', key .. ':total', want)
  return string.format('%d', math.max(others, 0))
end
"""

_CLAIM = (
    _PRELUDE
    + _OPEN_UPLOAD
    + _DISK_HOLDS
    + """
local file_id, user, is_admin = ARGV[1], ARGV[2], ARGV[3] == '1'
local s, e, total, crc = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local token, now, lease_until, create = ARGV[8], ARGV[9], ARGV[10], ARGV[11] == '1'
local f = redis.call('HMGET', up, 'owner', 'total', 'state', 'error')
if not f[1] then
  if not create then return {'absent'} end
  local refused = open_upload(KEYS[6], KEYS[7], KEYS[8], KEYS[9], file_id, user, total, now, '1',
                              {ARGV[12], ARGV[13], ARGV[14]})
  if refused then return {refused[1], '', '0', '0', '0', tostring(refused[2])} end
  f = {user, total, 'uploading', false}
end
if f[1] ~= user and not is_admin then return {'not_found'} end
if f[3] == 'expired' then return {'not_found'} end
if f[2] ~= total then return summary('total_mismatch') end
if f[3] == 'assembling' or f[3] == 'complete' then return summary('already_complete') end
if f[3] == 'failed' then return summary('upload_failed', f[4] or '') end
local member = s .. ':' .. e .. ':' .. crc
if redis.call('ZSCORE', chunks, member) then return summary('duplicate') end
local ns, ne = tonumber(s), tonumber(e)
local prev = redis.call('ZREVRANGEBYSCORE', chunks, e, '-inf', 'LIMIT', 0, 1)
if prev[1] and chunk_end(prev[1]) >= ns then return summary('overlap') end
local held = redis.call('HGETALL', claims)
local t = tonumber(now)
local in_flight = ne - ns + 1
for i = 1, #held, 2 do
  local cs, ce, cexp = string.match(held[i + 1], '^(%d+):(%d+):%d+:([%d.]+)$')
  if tonumber(cexp) < t then
    redis.call('HDEL', claims, held[i])
  elseif tonumber(cs) <= ne and tonumber(ce) >= ns then
    return summary('overlap')
  else
    in_flight = in_flight + tonumber(ce) - tonumber(cs) + 1
  end
end
-- Past `max_chunks` chunks (stored and in flight), only while they average `min_average` bytes:
-- every chunk costs Redis memory and /status time, whatever its size.
local max_chunks, min_average = tonumber(ARGV[15]), tonumber(ARGV[16])
if max_chunks > 0 then
  local count = redis.call('ZCARD', chunks) + redis.call('HLEN', claims) + 1
  local bytes = tonumber(redis.call('HGET', up, 'received')) + in_flight
  if count > max_chunks and bytes < count * min_average then
    return summary('too_many_chunks', max_chunks)
  end
end
redis.call('HSET', claims, token, member .. ':' .. lease_until)
-- ARGV[17] > 0: hold that many bytes of disk under the same token (extra: what others hold).
if tonumber(ARGV[17]) > 0 then
  return summary('claimed', hold_disk(KEYS[10], token, ARGV[17], now, lease_until))
end
return summary('claimed')
"""
)

# Renew a chunk's claim and, under the same token, its disk reservation.
_OPEN = (
    _PRELUDE
    + _OPEN_UPLOAD
    + """
if redis.call('EXISTS', up) == 1 then return summary('exists') end
local refused = open_upload(KEYS[6], KEYS[7], KEYS[8], KEYS[9], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
                            {ARGV[6], ARGV[7], ARGV[8]})
if refused then return {refused[1], '', '0', '0', '0', tostring(refused[2])} end
return summary('created')
"""
)

_RENEW = """
local function renew(key)
  local held = redis.call('HGET', key, ARGV[1])
  if not held then return 0 end
  -- string.gsub returns (string, count): keep only the string, or HSET gets a stray argument
  local renewed = string.gsub(held, ':[%d.]+$', ':' .. ARGV[2])
  redis.call('HSET', key, ARGV[1], renewed)
  return 1
end
if renew(KEYS[2]) == 1 then redis.call('ZADD', KEYS[2] .. ':leases', 'XX', ARGV[2], ARGV[1]) end
return renew(KEYS[1])
"""

# Hold disk space for a chunk about to be written; returns the bytes that other chunks hold.
# The caller measures free space only afterwards: a chunk that let go of its hold before this
# ran had written its bytes already, so they show in that measurement (measured before, they
# would be counted nowhere). One count for all API processes, which share one data disk.
_RESERVE_DISK = (
    _DISK_HOLDS
    + """
return hold_disk(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
)

_RELEASE_DISK = (
    _DISK_HOLDS
    + """
disk_drop(KEYS[1], ARGV[1])
return 1
"""
)

# `keep_until` (ARGV[10]) non-empty: a prefix of a streaming claim is committed, and the
# claim keeps the rest of its range (from END+1) with its lease renewed to that time.
_COMMIT = (
    _PRELUDE
    + _DISK_HOLDS
    + """
local file_id, token, s, e, crc, length, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local name, sha, keep_until = ARGV[8], ARGV[9], ARGV[10]
local held = redis.call('HGET', claims, token)
if not held then
  disk_drop(KEYS[6], token)
  return {'lost'}
end
local claim_end = string.match(held, '^%d+:(%d+):')
if keep_until ~= '' and tonumber(claim_end) > tonumber(e) then
  redis.call('HSET', claims, token, string.format('%d', tonumber(e) + 1) .. ':' .. claim_end .. ':0:' .. keep_until)
else
  redis.call('HDEL', claims, token)
  disk_drop(KEYS[6], token)  -- the chunk's bytes are on disk: free space shows them now
end
if redis.call('HGET', up, 'state') ~= 'uploading' then return {'lost'} end
redis.call('ZADD', chunks, s, s .. ':' .. e .. ':' .. crc)
local received = redis.call('HINCRBY', up, 'received', length)
local nxt = tonumber(redis.call('HGET', up, 'next'))
if tonumber(s) == nxt then
  nxt = tonumber(e) + 1
  while true do
    local m = redis.call('ZRANGEBYSCORE', chunks, string.format('%d', nxt), string.format('%d', nxt), 'LIMIT', 0, 1)
    if not m[1] then break end
    nxt = chunk_end(m[1]) + 1
  end
  redis.call('HSET', up, 'next', string.format('%d', nxt))
end
redis.call('HSET', up, 'updated_at', now, 'provisional', '0')
if name ~= '' then redis.call('HSETNX', up, 'name', name) end
if sha ~= '' then redis.call('HSETNX', up, 'sha256_expected', sha) end
redis.call('ZADD', activity, now, file_id)
-- A tus partial upload waits, complete, until a final concatenation takes its bytes.
if received == tonumber(redis.call('HGET', up, 'total')) and redis.call('HGET', up, 'tus_concat') ~= 'partial' then
  redis.call('HSET', up, 'state', 'assembling', 'assembling_since', now)
  redis.call('ZADD', assembling, now, file_id)
  -- and what the manifest written before the answer records, as this commit left it
  local reply = summary('committed')
  reply[7] = redis.call('HGETALL', up)
  reply[8] = redis.call('ZRANGE', chunks, 0, -1)
  return reply
end
return summary('committed')
"""
)

# Removes an upload's keys and its entries in every index; ARGV[2] file id, ARGV[3] owner prefix.
_DROP = """
local function drop()
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner then redis.call('ZREM', ARGV[3] .. owner, ARGV[2]) end
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[2])
  redis.call('ZREM', KEYS[5], ARGV[2])
  redis.call('ZREM', KEYS[6], ARGV[2])
end
"""

_RELEASE = (
    _UNCHARGE
    + _DROP
    + _DISK_HOLDS
    + """
redis.call('HDEL', KEYS[3], ARGV[1])
disk_drop(KEYS[7], ARGV[1])  -- and the chunk's disk hold
if redis.call('HGET', KEYS[1], 'provisional') == '1' and redis.call('ZCARD', KEYS[2]) == 0
   and redis.call('HLEN', KEYS[3]) == 0 then
  uncharge(KEYS[1])
  drop()
  return 1
end
return 0
"""
)

_FORGET = (
    _DROP
    + """
drop()
return 1
"""
)

# Puts an upload that Redis holds into the indexes (idempotent); ARGV[1] file id, ARGV[2] prefix.
_REINDEX = """
local f = redis.call('HMGET', KEYS[1], 'owner', 'created_at', 'state')
if not f[1] then return 0 end
if f[3] == 'expired' then return 1 end
redis.call('ZADD', ARGV[2] .. f[1], f[2] or '0', ARGV[1])
redis.call('ZADD', KEYS[2], f[2] or '0', ARGV[1])
return 1
"""

# Restore an upload from its on-disk manifest, unless Redis already knows it.
_HSET_ALL = """
local function hset_all(key, fields)
  local flat = {}
  for k, v in pairs(fields) do
    flat[#flat + 1] = k
    flat[#flat + 1] = v
  end
  redis.call('HSET', key, unpack(flat))
end
"""

_RESTORE = (
    _HSET_ALL
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fields = cjson.decode(ARGV[1])
hset_all(KEYS[1], fields)
local members = cjson.decode(ARGV[2])
for i = 1, #members, 500 do
  local batch = {}
  for j = i, math.min(i + 499, #members) do
    batch[#batch + 1] = string.match(members[j], '^(%d+):')
    batch[#batch + 1] = members[j]
  end
  redis.call('ZADD', KEYS[2], unpack(batch))
end
if fields['state'] ~= 'complete' then
  redis.call('ZADD', KEYS[4], fields['updated_at'], ARGV[3])
  -- counted again for its owner (the counters went with the Redis that lost it), never refused
  redis.call('HSET', KEYS[1], 'charged', fields['total'])
  redis.call('HINCRBY', KEYS[6], 'uploads', 1)
  redis.call('HINCRBY', KEYS[6], 'bytes', fields['total'])
end
if fields['state'] == 'assembling' then
  redis.call('ZADD', KEYS[5], fields['assembling_since'], ARGV[3])
end
redis.call('ZADD', ARGV[4] .. fields['owner'], fields['created_at'], ARGV[3])
redis.call('ZADD', KEYS[7], fields['created_at'], ARGV[3])
return 1
"""
)

_SET_STATE = (
    _HSET_ALL
    + _UNCHARGE
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= ARGV[1] then return state or '' end
local args = cjson.decode(ARGV[2])
hset_all(KEYS[1], args)
if args['state'] and args['state'] ~= 'assembling' then
  redis.call('ZREM', KEYS[5], ARGV[3])
end
if args['state'] == 'complete' then
  uncharge(KEYS[1])
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[3])
end
return 'ok'
"""
)

# Remove an upload that is stale: not complete, no activity since the cutoff, nothing in
# flight. Marks it `expired` (chunks then answer 404) so that files can be removed
# before the keys disappear; `forget` deletes the keys afterwards.
_EXPIRE_IF_STALE = (
    _UNCHARGE
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'updated_at')
if not f[1] then
  redis.call('ZREM', KEYS[4], ARGV[2])
  return 'absent'
end
if f[1] == 'complete' or f[1] == 'assembling' then return f[1] end
if f[1] == 'expired' then return 'expired' end
if tonumber(f[2]) > tonumber(ARGV[1]) then return 'fresh' end
local held = redis.call('HGETALL', KEYS[3])
for i = 1, #held, 2 do
  local cexp = string.match(held[i + 1], ':([%d.]+)$')
  if tonumber(cexp) >= tonumber(ARGV[3]) then return 'busy' end
end
uncharge(KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'expired')
return 'expired'
"""
)

# Mark an upload for removal on its owner's request; refused while a worker assembles it.
_TOMBSTONE = (
    _UNCHARGE
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'absent' end
if state == 'assembling' then return 'assembling' end
uncharge(KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'expired')
return state
"""
)


# Create an upload whose id the server chose (tus). KEYS[6] is the owner's index. A final
# concatenation is created with all its bytes already counted (ARGV[6] = total) and its
# parts' chunks, in state `assembling`.
_CREATE = (
    _PRELUDE
    + _HSET_ALL
    + _OPEN_UPLOAD
    + """
local file_id, owner, total, now, state, received = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('EXISTS', up) == 1 then return {'exists'} end
local refused = open_upload(KEYS[6], KEYS[7], KEYS[8], KEYS[9], file_id, owner, total, now, '0',
                            {ARGV[9], ARGV[10], ARGV[11]})
if refused then return {refused[1], '', '0', '0', '0', tostring(refused[2])} end
redis.call('HSET', up, 'state', state, 'received', received, 'next', received)
local extra = cjson.decode(ARGV[7])
if next(extra) then hset_all(up, extra) end
local members = cjson.decode(ARGV[8])
for i = 1, #members do
  redis.call('ZADD', chunks, string.match(members[i], '^(%d+):'), members[i])
end
if state == 'assembling' then
  redis.call('HSET', up, 'assembling_since', now)
  redis.call('ZADD', assembling, now, file_id)
end
return summary('created')
"""
)

# The length of a deferred-length upload becomes known: not below what is already stored;
# when everything has arrived, the upload goes to `assembling` as on a chunk's commit.
_DECLARE_LENGTH = (
    _PRELUDE
    + """
local file_id, total, now = ARGV[1], ARGV[2], ARGV[3]
local f = redis.call('HMGET', up, 'state', 'tus_deferred', 'received')
if not f[1] or f[1] == 'expired' then return {'absent'} end
if f[2] ~= '1' then return summary('not_deferred') end
if tonumber(total) < tonumber(f[3]) then return summary('too_small') end
redis.call('HSET', up, 'total', total, 'tus_deferred', '0', 'updated_at', now)
if f[1] == 'uploading' and tonumber(f[3]) == tonumber(total) and redis.call('HGET', up, 'tus_concat') ~= 'partial' then
  redis.call('HSET', up, 'state', 'assembling', 'assembling_since', now)
  redis.call('ZADD', assembling, now, file_id)
end
return summary('declared')
"""
)


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """What one owner may hold open, checked atomically when an upload is created, and how
    finely an upload may be cut, checked when a chunk is claimed; 0 is no limit."""

    max_open_uploads: int = 0
    max_open_bytes: int = 0
    creates_per_minute: int = 0
    max_chunks: int = 0
    min_average_chunk_bytes: int = 0

    def creation_args(self) -> list[int]:
        return [self.max_open_uploads, self.max_open_bytes, self.creates_per_minute]

    def chunk_args(self) -> list[int]:
        return [self.max_chunks, self.min_average_chunk_bytes]


NO_LIMITS = UploadLimits()


# What the files list shows of each upload, read for a whole page by one script call.
LIST_FIELDS = ("owner", "state", "total", "received", "name", "created_at", "updated_at", "sha256")
_LIST_FIELDS = (
    """
local out = {}
for i = 1, #KEYS do
  local f = redis.call('HMGET', KEYS[i], """
    + ", ".join(f"'{name}'" for name in LIST_FIELDS)
    + """)
  for j = 1, """
    + str(len(LIST_FIELDS))
    + """ do out[#out + 1] = f[j] or '' end
end
return out
"""
)


def _decoded(entries: Sequence[Any]) -> list[tuple[str, float]]:
    return [(_text(member), float(score)) for member, score in entries]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Outcome(StrEnum):
    """What an operation on an upload's chunks or creation reports (the first item of the
    scripts' `summary`); the refusals of a creation are those of `open_upload`."""

    CLAIMED = "claimed"
    DUPLICATE = "duplicate"
    ABSENT = "absent"
    NOT_FOUND = "not_found"
    TOTAL_MISMATCH = "total_mismatch"
    ALREADY_COMPLETE = "already_complete"
    UPLOAD_FAILED = "upload_failed"
    OVERLAP = "overlap"
    TOO_MANY_CHUNKS = "too_many_chunks"
    TOO_MANY_UPLOADS = "too_many_uploads"
    QUOTA_EXCEEDED = "quota_exceeded"
    RATE_LIMITED = "rate_limited"
    COMMITTED = "committed"
    LOST = "lost"
    CREATED = "created"
    EXISTS = "exists"
    DECLARED = "declared"
    NOT_DEFERRED = "not_deferred"
    TOO_SMALL = "too_small"


# `expire_if_stale`: what the upload was found to be ("expired": it is now, and may be removed).
Staleness = Literal["absent", "complete", "assembling", "expired", "fresh", "busy"]
_STALENESS: frozenset[str] = frozenset(("absent", "complete", "assembling", "expired", "fresh", "busy"))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An upload and its chunks as one script saw them."""

    upload: Upload
    chunks: list[Chunk]


@dataclass(frozen=True, slots=True)
class Progress:
    """What a chunk operation reports back: the outcome and the upload's counters (`state` is
    None when the operation found no upload to report on)."""

    outcome: Outcome
    state: UploadState | None = None
    received: int = 0
    total: int = 0
    next_expected: int = 0
    extra: str = ""
    # The commit that made the upload `assembling` also returns it and its chunks as it left
    # them: what the manifest records, without a second round trip.
    snapshot: Snapshot | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> Progress:
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in reply[:6]]
        if len(values) == 1:
            return cls(Outcome(values[0]))
        outcome, state, received, total, nxt, extra = values
        return cls(Outcome(outcome), UploadState(state) if state else None, int(received), int(total), int(nxt), extra)


def _pairs(flat: Any) -> dict[str, str]:
    """An HGETALL's raw reply as text: RESP2 (and a script's) a flat list, RESP3 a map."""
    pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
    return {_text(name): _text(value) for name, value in pairs}


def _chunks(members: Any) -> list[Chunk]:
    return [Chunk.parse(m) for m in cast(list[bytes], members)]


def _upload_from_hash(file_id: str, h: Mapping[str, str]) -> Upload:

    def opt_float(name: str) -> float | None:
        return float(h[name]) if h.get(name) else None

    return Upload(
        file_id=file_id,
        owner=h["owner"],
        total=int(h["total"]),
        state=UploadState(h["state"]),
        received=int(h.get("received", 0)),
        next_expected=int(h.get("next", 0)),
        file_name=h.get("name") or None,
        expected_sha256=h.get("sha256_expected") or None,
        created_at=float(h.get("created_at", 0)),
        updated_at=float(h.get("updated_at", 0)),
        persisted_at=opt_float("persisted_at"),
        sha256=h.get("sha256") or None,
        error=h.get("error") or None,
        completed_at=opt_float("completed_at"),
        provisional=h.get("provisional") == "1",
        tus=TusFields.from_strings(h),
    )


def _restore_fields(manifest: Manifest, now: float) -> dict[str, str]:
    """The hash of an upload put back from its manifest."""
    fields: dict[str, object] = {
        "owner": manifest.owner,
        "total": manifest.total,
        "state": manifest.state,
        "received": manifest.received,
        "next": manifest.next_expected,
        "name": manifest.file_name,
        "sha256_expected": manifest.expected_sha256,
        "created_at": repr(manifest.created_at),
        "updated_at": repr(manifest.updated_at),
        "persisted_at": repr(manifest.persisted_at) if manifest.persisted_at is not None else None,
        "error": manifest.error,
        "provisional": "0",
        **manifest.tus.as_strings(),
    }
    if manifest.state == UploadState.ASSEMBLING:
        fields["assembling_since"] = repr(now)
    return {k: str(v) for k, v in fields.items() if v not in (None, "")}


def _file_fields(meta: FileMeta) -> dict[str, str]:
    """The hash of a complete file put back from its meta.json."""
    fields: dict[str, object] = {
        "owner": meta.owner,
        "total": meta.size,
        "state": UploadState.COMPLETE,
        "received": meta.size,
        "next": meta.size,
        "name": meta.file_name,
        "sha256": meta.sha256,
        "sha256_expected": meta.expected_sha256,
        "created_at": repr(meta.created_at),
        "updated_at": repr(meta.completed_at),
        "completed_at": repr(meta.completed_at),
        "provisional": "0",
    }
    return {k: str(v) for k, v in fields.items() if v not in (None, "")}


def assembly_lock_key(file_id: str) -> str:
    return f"ft:lock:assemble:{file_id}"


def job_lock_key(name: str) -> str:
    return f"ft:lock:job:{name}"


class Lease:
    """A lock with a TTL, renewed by its holder while it works: a holder killed without
    releasing it frees what it held once the TTL lapses."""

    def __init__(self, lock: Lock) -> None:
        self._lock = lock

    async def acquire(self) -> bool:
        return bool(await self._lock.acquire())

    async def renew(self) -> None:
        """Restart the TTL; LockError when the lease was lost meanwhile."""
        await self._lock.reacquire()

    async def release(self) -> None:
        """Let go; a lease that lapsed (and may be someone else's now) is left alone."""
        with contextlib.suppress(LockError):
            await self._lock.release()


class UploadRepository:
    """The only code that knows the Redis layout of uploads (and of their locks)."""

    def __init__(self, redis: aioredis.Redis, shared: SharedConnection | None = None) -> None:
        """With `shared` (the API's), a chunk's two scripts, claim and commit, and a tus
        creation's run on that one connection with every other request's (core/redis_mux.py);
        everything else, and every script without it, through `redis`'s pool."""
        self.redis = redis  # tests look at keys through it; code elsewhere goes through the methods
        self._shared = shared
        self._claim = redis.register_script(_CLAIM)
        self._open = redis.register_script(_OPEN)
        self._renew = redis.register_script(_RENEW)
        self._reserve_disk = redis.register_script(_RESERVE_DISK)
        self._release_disk = redis.register_script(_RELEASE_DISK)
        self._commit = redis.register_script(_COMMIT)
        self._release = redis.register_script(_RELEASE)
        self._restore = redis.register_script(_RESTORE)
        self._set_state = redis.register_script(_SET_STATE)
        self._expire = redis.register_script(_EXPIRE_IF_STALE)
        self._tombstone = redis.register_script(_TOMBSTONE)
        self._create = redis.register_script(_CREATE)
        self._declare_length = redis.register_script(_DECLARE_LENGTH)
        self._forget = redis.register_script(_FORGET)
        self._reindex = redis.register_script(_REINDEX)
        self._list_fields = redis.register_script(_LIST_FIELDS)

    async def claim(
        self,
        file_id: str,
        user: str,
        is_admin: bool,
        start: int,
        end: int,
        total: int,
        crc32: int,
        token: str,
        lease_seconds: float,
        create: bool,
        now: float | None = None,
        limits: UploadLimits = NO_LIMITS,
        disk_bytes: int = 0,
    ) -> Progress:
        """Reserve [start, end] for a chunk about to be written, creating the upload if asked
        (for `user`, within `limits`, as `open_upload` does). Outcomes: `claimed`, `duplicate`,
        `absent` (not created), `not_found`, `total_mismatch`, `already_complete`,
        `upload_failed`, `overlap`, `too_many_chunks` (extra: the limit), or a refused creation.
        With `disk_bytes`, a claimed chunk also holds that much disk under `token`, as
        `reserve_disk` would (extra: the bytes other chunks hold; measure free space after), in
        the same round trip; `commit` and `release` let go of it."""
        now = now if now is not None else time.time()
        reply = await self._hot(
            self._claim,
            keys=[
                *_keys(file_id),
                quota_key(user),
                create_rate_key(user),
                owner_files_key(user),
                ALL_FILES_KEY,
                DISK_RESERVED_KEY,
            ],
            args=[
                file_id,
                user,
                int(is_admin),
                start,
                end,
                total,
                crc32,
                token,
                repr(now),
                repr(now + lease_seconds),
                int(create),
                *limits.creation_args(),
                *limits.chunk_args(),
                disk_bytes,
            ],
        )
        return Progress.from_reply(reply)

    async def _hot(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        if self._shared is not None:
            return await self._shared.run_script(script, keys, args)
        return await script(keys=keys, args=args)

    async def open_upload(
        self,
        file_id: str,
        owner: str,
        total: int,
        limits: UploadLimits,
        provisional: bool = False,
        now: float | None = None,
    ) -> Progress:
        """Create an upload of `total` bytes for `owner` if the owner's limits allow it: the one
        operation that checks and counts open uploads, their declared bytes and the creation
        rate (a first chunk's claim runs the same Lua). Outcomes: `created`, `exists` (nothing
        changed), `too_many_uploads`, `quota_exceeded` (extra: bytes still allowed),
        `rate_limited` (extra: seconds to wait)."""
        now = now if now is not None else time.time()
        reply = await self._open(
            keys=[*_keys(file_id), quota_key(owner), create_rate_key(owner), owner_files_key(owner), ALL_FILES_KEY],
            args=[file_id, owner, total, repr(now), int(provisional), *limits.creation_args()],
        )
        return Progress.from_reply(reply)

    async def open_uploads_of(self, owner: str) -> tuple[int, int]:
        """The owner's open uploads and their declared bytes, as counted for the limits."""
        uploads, nbytes = await self.redis.hmget(quota_key(owner), "uploads", "bytes")
        return int(uploads or 0), int(nbytes or 0)

    async def renew(self, file_id: str, token: str, lease_seconds: float) -> bool:
        """Extend a chunk's claim (and its disk reservation); False when the claim was lost."""
        return bool(
            await self._renew(
                keys=[_keys(file_id)[2], DISK_RESERVED_KEY], args=[token, repr(time.time() + lease_seconds)]
            )
        )

    async def reserve_disk(self, token: str, nbytes: int, lease_seconds: float, now: float | None = None) -> int:
        """Hold `nbytes` of the data disk for a chunk; returns the bytes other chunks hold.
        Measure free space after this call, not before (see _RESERVE_DISK). Released by
        `release_disk`, or when the lease lapses (renewed with the chunk's claim)."""
        now = now if now is not None else time.time()
        others = await self._reserve_disk(
            keys=[DISK_RESERVED_KEY], args=[token, nbytes, repr(now), repr(now + lease_seconds)]
        )
        return int(others)

    async def release_disk(self, token: str) -> None:
        await self._release_disk(keys=[DISK_RESERVED_KEY], args=[token])

    async def commit(
        self,
        file_id: str,
        token: str,
        chunk: Chunk,
        file_name: str | None,
        sha256: str | None,
        now: float | None = None,
        keep_lease: float | None = None,
    ) -> Progress:
        """Record a written chunk; its claim ends, and its disk hold with it. With `keep_lease`,
        the chunk is a prefix of the claim, which keeps the rest of its range for that many more
        seconds (a tus PATCH still streaming)."""
        now = now if now is not None else time.time()
        keep_until = repr(now + keep_lease) if keep_lease is not None else ""
        reply = await self._hot(
            self._commit,
            keys=[*_keys(file_id), DISK_RESERVED_KEY],
            args=[
                file_id,
                token,
                chunk.start,
                chunk.end,
                chunk.crc32,
                chunk.end - chunk.start + 1,
                repr(now),
                file_name or "",
                sha256 or "",
                keep_until,
            ],
        )
        progress = Progress.from_reply(reply)
        if len(reply) == 8:
            fields = _pairs(reply[6])
            progress = replace(progress, snapshot=Snapshot(_upload_from_hash(file_id, fields), _chunks(reply[7])))
        return progress

    async def create(
        self,
        file_id: str,
        owner: str,
        total: int,
        limits: UploadLimits,
        *,
        file_name: str | None = None,
        tus: TusFields | None = None,
        complete_chunks: list[Chunk] | None = None,
        now: float | None = None,
    ) -> Progress:
        """Create an upload in one step, within the owner's limits (the same Lua function as a
        first chunk's claim). With `complete_chunks` it is created with all its bytes counted (a
        tus final concatenation), ready for assembly. Outcomes: `created`, `exists` (the id is
        taken; nothing changed), or a refusal as `open_upload` gives."""
        now = now if now is not None else time.time()
        tus = tus if tus is not None else TusFields()
        chunks = complete_chunks or []
        fields = tus.as_strings()
        if file_name is not None:
            fields["name"] = file_name
        state, received = (UploadState.ASSEMBLING, total) if complete_chunks is not None else (UploadState.UPLOADING, 0)
        if total == 0 and complete_chunks is None and not tus.deferred and tus.concat is None:
            state = UploadState.ASSEMBLING  # nothing to wait for: an empty file
        reply = await self._hot(
            self._create,
            [*_keys(file_id), quota_key(owner), create_rate_key(owner), owner_files_key(owner), ALL_FILES_KEY],
            [
                file_id,
                owner,
                total,
                repr(now),
                state,
                received,
                json.dumps(fields),
                json.dumps([c.member for c in chunks]),
                *limits.creation_args(),
            ],
        )
        return Progress.from_reply(reply)

    async def declare_length(self, file_id: str, total: int, now: float | None = None) -> Progress:
        """Fix the total of a deferred-length upload."""
        now = now if now is not None else time.time()
        reply = await self._declare_length(keys=_keys(file_id), args=[file_id, total, repr(now)])
        return Progress.from_reply(reply)

    async def release(self, file_id: str, token: str) -> bool:
        """Give back a claim whose chunk failed, and its disk hold; drops a provisional upload
        that got nothing."""
        return bool(
            await self._release(
                keys=[*_indexed_keys(file_id), DISK_RESERVED_KEY], args=[token, file_id, OWNER_FILES_PREFIX]
            )
        )

    async def get(self, file_id: str) -> Upload | None:
        fields = await self._hash(upload_key(file_id))
        if not fields:
            return None
        upload = _upload_from_hash(file_id, fields)
        return None if upload.state == UploadState.EXPIRED else upload

    async def _hash(self, key: str) -> dict[str, str]:
        """HGETALL, on the shared connection when there is one (a tus PATCH reads its upload
        first: on a busy loop the pool's extra turns cost more than the command)."""
        if self._shared is None:
            return _pairs(await self.redis.hgetall(key))
        return _pairs(await self._shared.execute("HGETALL", key))

    async def chunks(self, file_id: str) -> list[Chunk]:
        return _chunks(await self.redis.zrange(_keys(file_id)[1], 0, -1))

    async def upload_and_chunks(self, file_id: str) -> tuple[Upload | None, list[Chunk]]:
        """`get` and `chunks` at once, for the manifest a last chunk writes. On the shared
        connection when there is one: the last chunks of a thousand devices finishing together
        waited seconds for a pooled connection here, on a loop too busy to hand them out."""
        if self._shared is None:
            upload = await self.get(file_id)
            return upload, (await self.chunks(file_id) if upload is not None else [])
        upload, members = await asyncio.gather(
            self.get(file_id), self._shared.execute("ZRANGE", _keys(file_id)[1], 0, -1)
        )
        return (upload, _chunks(members)) if upload is not None else (None, [])

    async def restore_manifest(self, manifest: Manifest, now: float | None = None) -> bool:
        """Put an upload back from its manifest, unless Redis knows it (then nothing changes).
        An `assembling` one counts as assembling since `now`; its owner's quota counts it again."""
        now = now if now is not None else time.time()
        return await self._restore_hash(manifest.file_id, _restore_fields(manifest, now), manifest.chunks)

    async def restore_file(self, meta: FileMeta) -> bool:
        """Put a complete file back from its meta.json, unless Redis knows it."""
        return await self._restore_hash(meta.file_id, _file_fields(meta), ())

    async def _restore_hash(self, file_id: str, fields: dict[str, str], chunks: Sequence[Chunk]) -> bool:
        return bool(
            await self._restore(
                keys=[*_keys(file_id), quota_key(fields["owner"]), ALL_FILES_KEY],
                args=[json.dumps(fields), json.dumps([c.member for c in chunks]), file_id, OWNER_FILES_PREFIX],
            )
        )

    async def transition(self, file_id: str, expected_state: str, **fields: str) -> bool:
        """Set fields (usually `state`) only if the upload is still in `expected_state`."""
        reply = await self._set_state(
            keys=_keys(file_id), args=[expected_state, json.dumps({k: str(v) for k, v in fields.items()}), file_id]
        )
        return reply in (b"ok", "ok")

    async def mark_complete(self, file_id: str, sha256: str, completed_at: float) -> bool:
        """An assembled file is in place: `assembling` becomes `complete` (False if it was not assembling)."""
        when = repr(completed_at)
        complete = UploadState.COMPLETE
        return await self.transition(
            file_id, UploadState.ASSEMBLING, state=complete, sha256=sha256, completed_at=when, updated_at=when
        )

    async def mark_failed(self, file_id: str, error: str) -> bool:
        """Verification failed: `assembling` becomes `failed`, with the reason."""
        return await self.transition(file_id, UploadState.ASSEMBLING, state=UploadState.FAILED, error=error)

    async def mark_persisted(self, file_id: str, when: float) -> None:
        await self.redis.eval(
            "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'persisted_at', ARGV[1]) end",
            1,
            upload_key(file_id),
            repr(when),
        )

    async def expire_if_stale(self, file_id: str, cutoff: float, now: float | None = None) -> Staleness:
        now = now if now is not None else time.time()
        reply = _text(await self._expire(keys=_keys(file_id), args=[repr(cutoff), file_id, repr(now)]))
        if reply not in _STALENESS:
            raise ValueError(f"unexpected reply from the expiry script: {reply!r}")
        return cast(Staleness, reply)

    async def tombstone(self, file_id: str) -> UploadState | None:
        """Mark the upload `expired` so that nothing new lands in it; returns the state it had
        (None: Redis did not know it). An `assembling` upload is left as it is."""
        reply = _text(await self._tombstone(keys=[upload_key(file_id)]))
        return None if reply == "absent" else UploadState(reply)

    async def forget(self, file_id: str) -> None:
        await self._forget(keys=_indexed_keys(file_id), args=["", file_id, OWNER_FILES_PREFIX])

    # --- the files list ----------------------------------------------------------
    async def reindex(self, file_id: str) -> bool:
        """Put an upload Redis knows into the list indexes; False when Redis does not know it."""
        return bool(await self._reindex(keys=[upload_key(file_id), ALL_FILES_KEY], args=[file_id, OWNER_FILES_PREFIX]))

    async def files_indexed(self) -> bool:
        return bool(await self.redis.exists(FILES_INDEXED_KEY))

    async def mark_files_indexed(self) -> None:
        await self.redis.set(FILES_INDEXED_KEY, repr(time.time()))

    async def active_ids(self, batch: int = 1000) -> AsyncIterator[str]:
        """Every upload not yet complete (the activity index), a batch at a time."""
        async for member, _ in self.redis.zscan_iter(ACTIVITY_KEY, count=batch):
            yield _text(member)

    async def newest_first(
        self, owner_id: str | None, limit: int, before: tuple[float, str] | None
    ) -> list[tuple[str, float]]:
        """Up to `limit` (file_id, created_at) of one owner (or everybody's, for None), newest
        first, strictly after the position `before` in that order. Positions are (score,
        member), never offsets, so uploads created meanwhile neither repeat nor hide others.
        Redis orders equal scores by member bytes, descending here: uploads created in the same
        instant as `before` come first if their id sorts below its id."""
        key = ALL_FILES_KEY if owner_id is None else owner_files_key(owner_id)
        if before is None:
            return _decoded(await self.redis.zrevrangebyscore(key, "+inf", "-inf", start=0, num=limit, withscores=True))
        score, member = before
        ties = _decoded(await self.redis.zrevrangebyscore(key, repr(score), repr(score), withscores=True))
        found = [(m, s) for m, s in ties if m < member][:limit]
        if len(found) < limit:
            found += _decoded(
                await self.redis.zrevrangebyscore(
                    key, f"({score!r}", "-inf", start=0, num=limit - len(found), withscores=True
                )
            )
        return found

    async def get_many(self, file_ids: list[str]) -> list[Upload | None]:
        """The listed fields of many uploads in one script call (one reply to parse, not one per
        upload); None for ids Redis does not know, or that are being removed."""
        if not file_ids:
            return []
        flat = await self._list_fields(keys=[upload_key(f) for f in file_ids])
        width = len(LIST_FIELDS)
        uploads: list[Upload | None] = []
        for index, file_id in enumerate(file_ids):
            values = flat[index * width : (index + 1) * width]
            fields = {name: _text(value) for name, value in zip(LIST_FIELDS, values, strict=True) if value}
            known = "owner" in fields and fields.get("state") not in (None, UploadState.EXPIRED)
            uploads.append(_upload_from_hash(file_id, fields) if known else None)
        return uploads

    async def assembling_since(self, cutoff: float) -> list[str]:
        """Uploads that became `assembling` at or before `cutoff` (few: assembly is quick)."""
        ids = cast(list[bytes], await self.redis.zrangebyscore(ASSEMBLING_KEY, "-inf", repr(cutoff)))
        return [_text(raw) for raw in ids]

    async def idle_since(self, cutoff: float, batch: int = 500) -> AsyncIterator[str]:
        """File ids of uploads not complete whose last activity is at or before `cutoff`.

        Pages by score rather than offset, so that callers may remove entries as they go;
        never holds more than one batch in memory.
        """
        low, seen_at_low = "-inf", set[str]()
        while True:
            page = _decoded(
                await self.redis.zrangebyscore(
                    ACTIVITY_KEY, low, repr(cutoff), start=0, num=batch + len(seen_at_low), withscores=True
                )
            )
            fresh = [(m, score) for m, score in page if m not in seen_at_low]
            if not fresh:
                return
            for file_id, _ in fresh:
                yield file_id
            last_score = fresh[-1][1]
            seen_at_low = {m for m, score in fresh if score == last_score} | (
                seen_at_low if repr(last_score) == low else set()
            )
            low = repr(last_score)

    # --- leases ----------------------------------------------------------------------
    def assembly_lease(self, file_id: str, lease_seconds: float) -> Lease:
        """The lease of the run assembling `file_id`: `acquire` waits up to one lease period
        (a killed run's lease lapses within it), polling every 0.1 s."""
        return Lease(
            Lock(
                self.redis,
                assembly_lock_key(file_id),
                timeout=lease_seconds,
                sleep=0.1,
                blocking=True,
                blocking_timeout=lease_seconds + 1,
            )
        )

    async def assembly_running(self, file_id: str) -> bool:
        """Whether a run holds the assembly lease of `file_id` now."""
        return bool(await self.redis.exists(assembly_lock_key(file_id)))

    def job_lease(self, name: str, ttl: float, wait: float = 0.0) -> Lease:
        """The lease of periodic job `name`; `acquire` waits up to `wait` seconds (0: not at all)."""
        return Lease(
            Lock(self.redis, job_lock_key(name), timeout=ttl, blocking=wait > 0, blocking_timeout=wait or None)
        )


# --- operator metrics (GET /metrics) ------------------------------------------------------------
ASSEMBLY_METRICS_KEY = "ft:metrics:assembly"
# Upper bounds (seconds) of the assembly-duration histogram; one more bucket, +Inf, above them.
ASSEMBLY_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def _bucket(seconds: float) -> str:
    return next((repr(bound) for bound in ASSEMBLY_BUCKETS if seconds <= bound), "+Inf")


def record_assembly(client: redis.Redis, seconds: float, outcome: str) -> None:
    """Add one assembly's duration (a worker, synchronous client): every worker on every node
    adds to the same hash, so one scrape of the API sees them all."""
    pipe = client.pipeline(transaction=True)
    pipe.hincrby(ASSEMBLY_METRICS_KEY, f"{outcome}:{_bucket(seconds)}", 1)
    pipe.hincrbyfloat(ASSEMBLY_METRICS_KEY, f"{outcome}:sum", seconds)
    pipe.execute()


@dataclass(frozen=True, slots=True)
class AssemblyHistogram:
    """One outcome's assembly durations: cumulative counts per upper bound, as Prometheus has them."""

    outcome: str
    buckets: list[tuple[str, int]]
    total_seconds: float


def assembly_histograms(raw: dict[bytes, bytes]) -> list[AssemblyHistogram]:
    counts: dict[str, dict[str, int]] = {}
    sums: dict[str, float] = {}
    for key, value in raw.items():
        outcome, _, bucket = key.decode().rpartition(":")
        if bucket == "sum":
            sums[outcome] = float(value)
        else:
            counts.setdefault(outcome, {})[bucket] = int(value)
    histograms = []
    for outcome in sorted(counts):
        running, cumulative = 0, []
        for bound in [*map(repr, ASSEMBLY_BUCKETS), "+Inf"]:
            running += counts[outcome].get(bound, 0)
            cumulative.append((bound, running))
        histograms.append(AssemblyHistogram(outcome, cumulative, sums.get(outcome, 0.0)))
    return histograms


@dataclass(frozen=True, slots=True)
class OperatorSnapshot:
    """What GET /metrics reads from Redis at scrape time: a few O(1) commands."""

    incomplete_uploads: int
    assembling_uploads: int
    queue_depth: int
    assembly: list[AssemblyHistogram]


async def operator_snapshot(redis: aioredis.Redis, queue_key: str) -> OperatorSnapshot:
    pipe = redis.pipeline(transaction=False)
    pipe.zcard(ACTIVITY_KEY)
    pipe.zcard(ASSEMBLING_KEY)
    pipe.llen(queue_key)
    pipe.hgetall(ASSEMBLY_METRICS_KEY)
    incomplete, assembling, depth, assembly = await pipe.execute()
    return OperatorSnapshot(incomplete, assembling, depth, assembly_histograms(assembly))
