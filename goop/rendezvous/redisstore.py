"""The shared store on Redis: the same interface as `SQLiteStore`, for instances on many hosts.

`goop.rendezvous.shared.SharedBoard` runs a store's calls on one thread of its
own and does everything else (tailing, applying, fan-out, 503s, health), so
this module only maps the five operations onto Redis, each in one round trip
(a Lua script where several keys change together, so every instance sees the
same order and pruning happens once):

- ``<prefix>:head``: the last event id (INCR); ids are the same everywhere.
- ``<prefix>:log``: a stream, one entry per event, entry id ``<event id>-1``;
  trimmed to the newest `KEEP_EVENTS` by the pruner.
- ``<prefix>:peers``: a hash, peer ID -> its latest event (id, data, created);
  ``<prefix>:seen``: a sorted set, peer ID -> when last heard (expiry).
- ``<prefix>:epoch``: a random token written when the data set is created; if
  it changes or vanishes (Redis restarted without persistence, or flushed), the
  data this instance knew is gone: reported as `StoreReplaced`, like a deleted
  SQLite file.

Blocking calls (redis-py) are fine here: they only ever run on the board's
store thread, never on the reactor's.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from goop.rendezvous.store import KEEP_EVENTS, EventRow, StoreError, StoreReplaced

PREFIX: Final = "goop"
# Seconds a single Redis call may take before it counts as failed.
SOCKET_TIMEOUT: Final = 2.0

_APPEND: Final = """
-- Ids are beyond 2^31 (a microsecond clock): format them, never concatenate numbers.
local id = string.format('%.0f', redis.call('INCR', KEYS[1]))
redis.call('XADD', KEYS[2], id .. '-1', 'p', ARGV[1], 'k', ARGV[2], 'd', ARGV[3],
           'c', ARGV[4], 'n', ARGV[5])
if ARGV[2] == 'offline' then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
else
  redis.call('HSET', KEYS[3], ARGV[1], id .. ' ' .. ARGV[4] .. ' ' .. ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
end
return id
"""

# Expired peers, each removed and given its offline event in the same script:
# run by every instance, it still writes exactly one offline per expiry.
_PRUNE: Final = """
local cutoff = tonumber(ARGV[1])
local out = {}
for i = 4, #ARGV, 2 do
  local peer, body = ARGV[i], ARGV[i + 1]
  local seen = redis.call('ZSCORE', KEYS[4], peer)
  -- Still silent (no publish came since it was read, no other instance pruned it).
  if seen and tonumber(seen) <= cutoff then
    local id = string.format('%.0f', redis.call('INCR', KEYS[1]))
    redis.call('XADD', KEYS[2], id .. '-1', 'p', peer, 'k', 'expired', 'd', body,
               'c', ARGV[2], 'n', 0)
    redis.call('HDEL', KEYS[3], peer)
    redis.call('ZREM', KEYS[4], peer)
    out[#out + 1] = {id, peer, body}
  end
end
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local keep = tonumber(ARGV[3])
if head > keep then
  redis.call('XTRIM', KEYS[2], 'MINID', string.format('%.0f', head - keep + 1) .. '-0')
end
return out
"""

# Who is stale, with each one's last message, read first: the offline bodies are
# made in Python from that message and handed to the script above.
_STALE: Final = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for i, peer in ipairs(stale) do
  out[#out + 1] = {peer, redis.call('HGET', KEYS[1], peer) or ''}
end
return out
"""

PRUNE_BATCH: Final = 500


def redacted(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    if parts.username:
        netloc = f"{parts.username}:***@{netloc}"
    else:
        netloc = f":***@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RedisStore:
    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        self.url = url
        self.path = redacted(url)  # what logs call the store
        self.created = False
        self._keys = [f"{prefix}:{k}" for k in ("head", "log", "peers", "seen")]
        self._epoch_key = f"{prefix}:epoch"
        self._epoch: bytes | None = None
        self._client: Any = None
        self._append: Any = None
        self._prune: Any = None
        self._stale: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StoreError(f"{self.path}: not open")
        return self._client

    def _fail(self, e: BaseException) -> StoreError:
        why = " ".join(str(e).split()) or type(e).__name__
        return StoreError(f"{self.path}: {why}")

    def open(self) -> None:
        import redis

        try:
            self._client = redis.Redis.from_url(
                self.url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
            )
            client = self._client
            self._append = client.register_script(_APPEND)
            self._prune = client.register_script(_PRUNE)
            self._stale = client.register_script(_STALE)
            token = secrets.token_hex(8).encode()
            if client.set(self._epoch_key, token, nx=True):
                self.created = True
                # Ids start at the wall clock in microseconds, as SQLite's do: an
                # id a client kept from an earlier server reads as "too old".
                client.set(self._keys[0], int(time.time() * 1e6), nx=True)
            self._epoch = client.get(self._epoch_key)
        except redis.RedisError as e:
            raise self._fail(e) from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def identity_problem(self) -> str | None:
        """Why the data this instance knew is gone (Redis lost it), if it is."""
        now = self._call(self.client.get, self._epoch_key)
        if now == self._epoch:
            return None
        return "its data set was lost or replaced (restarted without persistence, or flushed)"

    def set_busy_timeout(self, ms: int) -> None:
        pass  # Redis has no lock to wait on; SOCKET_TIMEOUT bounds every call

    def _call(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        import redis

        try:
            return f(*args, **kw)
        except redis.RedisError as e:
            raise self._fail(e) from None

    def probe(self) -> int:
        self._call(self.client.ping)
        problem = self.identity_problem()
        if problem is not None:
            raise StoreReplaced(f"{self.path}: {problem}")
        return self.head()

    def head(self) -> int:
        value = self._call(self.client.get, self._keys[0])
        return int(value or 0)

    def append(self, peer_id: str, kind: str, data: bytes, now: float, nbytes: int) -> EventRow:
        event_id = self._call(
            self._append, keys=self._keys, args=[peer_id, kind, data, repr(now), nbytes]
        )
        return EventRow(int(event_id), peer_id, data, now, nbytes, kind)

    def tail(self, after: int, limit: int = 2000) -> list[EventRow]:
        entries = self._call(self.client.xrange, self._keys[1], f"{after + 1}-0", "+", limit)
        rows = []
        for entry_id, f in entries:
            event_id = int(entry_id.split(b"-")[0])
            peer, data, created = f[b"p"].decode(), bytes(f[b"d"]), float(f[b"c"])
            rows.append(EventRow(event_id, peer, data, created, int(f[b"n"]), f[b"k"].decode()))
        return rows

    def snapshot(self, now: float, ttl: float) -> tuple[list[EventRow], int]:
        client = self.client
        pipe = client.pipeline(transaction=True)
        pipe.zrangebyscore(self._keys[3], f"({now - ttl}", "+inf")
        pipe.hgetall(self._keys[2])
        pipe.get(self._keys[0])
        live, table, head = self._call(pipe.execute)
        alive = set(live)
        rows = []
        for peer, packed in table.items():
            if peer not in alive:
                continue
            event_id, created, data = bytes(packed).split(b" ", 2)
            rows.append(EventRow(int(event_id), peer.decode(), data, float(created), 0))
        rows.sort(key=lambda r: r.id)
        return rows, int(head or 0)

    def prune(
        self, now: float, ttl: float, offline: Callable[[str, bytes, float], bytes]
    ) -> list[EventRow]:
        stale = self._call(
            self._stale, keys=[self._keys[2], self._keys[3]], args=[now - ttl, PRUNE_BATCH]
        )
        pairs: list[Any] = []
        for peer, packed in stale:
            data = bytes(packed).split(b" ", 2)[2] if packed else b""
            pairs += [peer, offline(peer.decode(), data, now)]
        # Another instance may prune (or the peer publish) between the two calls:
        # the script writes an offline only for a peer still stale. It also trims
        # the log, so it runs even when nobody is stale.
        written = self._call(
            self._prune, keys=self._keys, args=[now - ttl, repr(now), KEEP_EVENTS, *pairs]
        )
        return [
            EventRow(int(event_id), peer.decode(), bytes(body), now, 0, "expired")
            for event_id, peer, body in written
        ]
