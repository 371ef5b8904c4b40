"""Upload progress in Redis: a few well-named atomic operations, Lua where keys change together.

Keys of one upload (file ids are validated, so they are safe in key names):
  ft:up:<id>          hash: owner, total, state, received, next, name, sha256_expected,
                      created_at, updated_at, persisted_at, sha256, error, completed_at,
                      provisional (1 until the first chunk is committed)
  ft:up:<id>:chunks   sorted set of stored chunks, score START, member "START:END:CRC"
  ft:up:<id>:claims   hash token -> "START:END:CRC:LEASE_UNTIL" of chunks being written now
  ft:activity         sorted set file_id -> last activity, of uploads not yet complete
  ft:assembling       sorted set file_id -> when it became `assembling`
  ft:owner:<owner>    sorted set file_id -> created_at: one owner's uploads and files (the list)
  ft:files:all        sorted set file_id -> created_at: everybody's (the admins' list)
  ft:files:indexed    set once the two indexes above have been rebuilt from disk and Redis

Stored chunks never overlap (the claim refuses overlaps with stored and in-flight
chunks), so one ZREVRANGEBYSCORE finds the only stored chunk that could overlap a
new one. `next` (first missing byte) advances over contiguous chunks on commit.
Numbers going back to Redis from Lua are formatted with %d: Lua's default
formatting would turn large byte offsets into floats.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

ACTIVITY_KEY = "ft:activity"
ASSEMBLING_KEY = "ft:assembling"
ALL_FILES_KEY = "ft:files:all"
FILES_INDEXED_KEY = "ft:files:indexed"
OWNER_FILES_PREFIX = "ft:owner:"


def upload_key(file_id: str) -> str:
    return f"ft:up:{file_id}"


def owner_files_key(owner_id: str) -> str:
    return f"{OWNER_FILES_PREFIX}{owner_id}"


def _keys(file_id: str) -> list[str]:
    base = upload_key(file_id)
    return [base, f"{base}:chunks", f"{base}:claims", ACTIVITY_KEY, ASSEMBLING_KEY]


def _indexed_keys(file_id: str) -> list[str]:
    """An upload's keys and the everybody index (KEYS[6]); owner indexes are named from the
    hash's `owner` inside the scripts, with OWNER_FILES_PREFIX passed as an argument."""
    return [*_keys(file_id), ALL_FILES_KEY]


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

_CLAIM = _PRELUDE + """
local file_id, user, is_admin = ARGV[1], ARGV[2], ARGV[3] == '1'
local s, e, total, crc = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local token, now, lease_until, create = ARGV[8], ARGV[9], ARGV[10], ARGV[11] == '1'
local f = redis.call('HMGET', up, 'owner', 'total', 'state', 'error')
if not f[1] then
  if not create then return {'absent'} end
  redis.call('HSET', up, 'owner', user, 'total', total, 'state', 'uploading', 'received', '0',
             'next', '0', 'created_at', now, 'updated_at', now, 'provisional', '1')
  redis.call('ZADD', activity, now, file_id)
  redis.call('ZADD', ARGV[12] .. user, now, file_id)
  redis.call('ZADD', KEYS[6], now, file_id)
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
for i = 1, #held, 2 do
  local cs, ce, cexp = string.match(held[i + 1], '^(%d+):(%d+):%d+:([%d.]+)$')
  if tonumber(cexp) < t then
    redis.call('HDEL', claims, held[i])
  elseif tonumber(cs) <= ne and tonumber(ce) >= ns then
    return summary('overlap')
  end
end
redis.call('HSET', claims, token, member .. ':' .. lease_until)
return summary('claimed')
"""

_RENEW = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then return 0 end
-- string.gsub returns (string, count): keep only the string, or HSET gets a stray argument
local renewed = string.gsub(held, ':[%d.]+$', ':' .. ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], renewed)
return 1
"""

_COMMIT = _PRELUDE + """
local file_id, token, s, e, crc, length, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local name, sha = ARGV[8], ARGV[9]
if not redis.call('HGET', claims, token) then return {'lost'} end
redis.call('HDEL', claims, token)
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
if received == tonumber(redis.call('HGET', up, 'total')) then
  redis.call('HSET', up, 'state', 'assembling', 'assembling_since', now)
  redis.call('ZADD', assembling, now, file_id)
end
return summary('committed')
"""

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

_RELEASE = _DROP + """
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[1], 'provisional') == '1' and redis.call('ZCARD', KEYS[2]) == 0
   and redis.call('HLEN', KEYS[3]) == 0 then
  drop()
  return 1
end
return 0
"""

_FORGET = _DROP + """
drop()
return 1
"""

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

_RESTORE = _HSET_ALL + """
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
end
if fields['state'] == 'assembling' then
  redis.call('ZADD', KEYS[5], fields['assembling_since'], ARGV[3])
end
redis.call('ZADD', ARGV[4] .. fields['owner'], fields['created_at'], ARGV[3])
redis.call('ZADD', KEYS[6], fields['created_at'], ARGV[3])
return 1
"""

_SET_STATE = _HSET_ALL + """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= ARGV[1] then return state or '' end
local args = cjson.decode(ARGV[2])
hset_all(KEYS[1], args)
if args['state'] and args['state'] ~= 'assembling' then
  redis.call('ZREM', KEYS[5], ARGV[3])
end
if args['state'] == 'complete' then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[3])
end
return 'ok'
"""

# Remove an upload that is stale: not complete, no activity since the cutoff, nothing in
# flight. Marks it `expired` (chunks then answer 404) so that files can be removed
# before the keys disappear; `forget` deletes the keys afterwards.
_EXPIRE_IF_STALE = """
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
redis.call('HSET', KEYS[1], 'state', 'expired')
return 'expired'
"""

# Mark an upload for removal on its owner's request; refused while a worker assembles it.
_TOMBSTONE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'absent' end
if state == 'assembling' then return 'assembling' end
redis.call('HSET', KEYS[1], 'state', 'expired')
return state
"""


# What the files list shows of each upload, read for a whole page by one script call.
LIST_FIELDS = ("owner", "state", "total", "received", "name", "created_at", "updated_at", "sha256")
_LIST_FIELDS = """
local out = {}
for i = 1, #KEYS do
  local f = redis.call('HMGET', KEYS[i], %s)
  for j = 1, %d do out[#out + 1] = f[j] or '' end
end
return out
""" % (", ".join(f"'{name}'" for name in LIST_FIELDS), len(LIST_FIELDS))


def _decoded(entries: list[tuple[bytes, float]]) -> list[tuple[str, float]]:
    return [(member.decode(), score) for member, score in entries]


@dataclass(frozen=True, slots=True)
class Chunk:
    start: int
    end: int
    crc32: int

    @classmethod
    def parse(cls, member: bytes | str) -> "Chunk":
        text = member.decode() if isinstance(member, bytes) else member
        start, end, crc = text.split(":")
        return cls(int(start), int(end), int(crc))

    @property
    def member(self) -> str:
        return f"{self.start}:{self.end}:{self.crc32}"


@dataclass(frozen=True, slots=True)
class Progress:
    """What a chunk operation reports back: the outcome and the upload's counters."""

    outcome: str
    state: str = ""
    received: int = 0
    total: int = 0
    next_expected: int = 0
    extra: str = ""

    @classmethod
    def from_reply(cls, reply: list) -> "Progress":
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in reply]
        if len(values) == 1:
            return cls(values[0])
        outcome, state, received, total, nxt, extra = values
        return cls(outcome, state, int(received), int(total), int(nxt), extra)


@dataclass(slots=True)
class Upload:
    file_id: str
    owner: str
    total: int
    state: str
    received: int
    next_expected: int
    file_name: str | None = None
    expected_sha256: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    persisted_at: float | None = None
    sha256: str | None = None
    error: str | None = None
    completed_at: float | None = None
    fields: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_hash(cls, file_id: str, raw: dict) -> "Upload":
        h = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v for k, v in raw.items()}

        def opt_float(name: str) -> float | None:
            return float(h[name]) if h.get(name) else None

        return cls(
            file_id=file_id,
            owner=h["owner"],
            total=int(h["total"]),
            state=h["state"],
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
            fields=h,
        )


class UploadRepository:
    """The only code that knows the Redis layout of uploads."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._commit = redis.register_script(_COMMIT)
        self._release = redis.register_script(_RELEASE)
        self._restore = redis.register_script(_RESTORE)
        self._set_state = redis.register_script(_SET_STATE)
        self._expire = redis.register_script(_EXPIRE_IF_STALE)
        self._tombstone = redis.register_script(_TOMBSTONE)
        self._forget = redis.register_script(_FORGET)
        self._reindex = redis.register_script(_REINDEX)
        self._list_fields = redis.register_script(_LIST_FIELDS)

    async def claim(
        self, file_id: str, user: str, is_admin: bool, start: int, end: int, total: int, crc32: int,
        token: str, lease_seconds: float, create: bool, now: float | None = None,
    ) -> Progress:
        """Reserve [start, end] for a chunk about to be written, creating the upload if asked."""
        now = now if now is not None else time.time()
        reply = await self._claim(
            keys=_indexed_keys(file_id),
            args=[file_id, user, int(is_admin), start, end, total, crc32, token,
                  repr(now), repr(now + lease_seconds), int(create), OWNER_FILES_PREFIX],
        )
        return Progress.from_reply(reply)

    async def renew(self, file_id: str, token: str, lease_seconds: float) -> bool:
        return bool(await self._renew(keys=[_keys(file_id)[2]], args=[token, repr(time.time() + lease_seconds)]))

    async def commit(
        self, file_id: str, token: str, chunk: Chunk, file_name: str | None, sha256: str | None,
        now: float | None = None,
    ) -> Progress:
        now = now if now is not None else time.time()
        reply = await self._commit(
            keys=_keys(file_id),
            args=[file_id, token, chunk.start, chunk.end, chunk.crc32, chunk.end - chunk.start + 1,
                  repr(now), file_name or "", sha256 or ""],
        )
        return Progress.from_reply(reply)

    async def release(self, file_id: str, token: str) -> bool:
        """Give back a claim whose chunk failed; drops a provisional upload that got nothing."""
        return bool(await self._release(keys=_indexed_keys(file_id), args=[token, file_id, OWNER_FILES_PREFIX]))

    async def get(self, file_id: str) -> Upload | None:
        raw = await self.redis.hgetall(upload_key(file_id))
        if not raw:
            return None
        upload = Upload.from_hash(file_id, raw)
        return None if upload.state == "expired" else upload

    async def chunks(self, file_id: str) -> list[Chunk]:
        members = await self.redis.zrange(_keys(file_id)[1], 0, -1)
        return [Chunk.parse(m) for m in members]

    async def restore(self, file_id: str, fields: dict[str, str], chunks: list[Chunk]) -> bool:
        return bool(await self._restore(
            keys=_indexed_keys(file_id),
            args=[json.dumps(fields), json.dumps([c.member for c in chunks]), file_id, OWNER_FILES_PREFIX],
        ))

    async def transition(self, file_id: str, expected_state: str, **fields: str) -> bool:
        """Set fields (usually `state`) only if the upload is still in `expected_state`."""
        reply = await self._set_state(
            keys=_keys(file_id), args=[expected_state, json.dumps({k: str(v) for k, v in fields.items()}), file_id]
        )
        return reply in (b"ok", "ok")

    async def mark_persisted(self, file_id: str, when: float) -> None:
        await self.redis.eval(
            "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'persisted_at', ARGV[1]) end",
            1, upload_key(file_id), repr(when),
        )

    async def expire_if_stale(self, file_id: str, cutoff: float, now: float | None = None) -> str:
        now = now if now is not None else time.time()
        reply = await self._expire(keys=_keys(file_id), args=[repr(cutoff), file_id, repr(now)])
        return reply.decode() if isinstance(reply, bytes) else reply

    async def tombstone(self, file_id: str) -> str:
        """Mark the upload `expired` so that nothing new lands in it; returns the state it had."""
        reply = await self._tombstone(keys=[upload_key(file_id)])
        return reply.decode() if isinstance(reply, bytes) else reply

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

    async def active_ids(self, batch: int = 1000):
        """Every upload not yet complete (the activity index), a batch at a time."""
        async for member, _ in self.redis.zscan_iter(ACTIVITY_KEY, count=batch):
            yield member.decode()

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
            found += _decoded(await self.redis.zrevrangebyscore(
                key, f"({score!r}", "-inf", start=0, num=limit - len(found), withscores=True))
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
            values = flat[index * width:(index + 1) * width]
            fields = {name: value for name, value in zip(LIST_FIELDS, values) if value}
            known = "owner" in fields and fields.get("state") not in (None, b"expired")
            uploads.append(Upload.from_hash(file_id, fields) if known else None)
        return uploads

    async def assembling_since(self, cutoff: float) -> list[str]:
        """Uploads that became `assembling` at or before `cutoff` (few: assembly is quick)."""
        ids = await self.redis.zrangebyscore(ASSEMBLING_KEY, "-inf", repr(cutoff))
        return [raw.decode() for raw in ids]

    async def idle_since(self, cutoff: float, batch: int = 500):
        """File ids of uploads not complete whose last activity is at or before `cutoff`.

        Pages by score rather than offset, so that callers may remove entries as they go;
        never holds more than one batch in memory.
        """
        low, seen_at_low = "-inf", set()
        while True:
            page = await self.redis.zrangebyscore(
                ACTIVITY_KEY, low, repr(cutoff), start=0, num=batch + len(seen_at_low), withscores=True
            )
            fresh = [(m.decode(), score) for m, score in page if m.decode() not in seen_at_low]
            if not fresh:
                return
            for file_id, _ in fresh:
                yield file_id
            last_score = fresh[-1][1]
            seen_at_low = {m for m, score in fresh if score == last_score} | (
                seen_at_low if repr(last_score) == low else set()
            )
            low = repr(last_score)
