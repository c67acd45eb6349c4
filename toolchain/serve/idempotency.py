"""``Idempotency-Key``: a retried request gets the stored response instead of being run (and counted) again.

A client (the news feeder) that sends ``Idempotency-Key: <key>`` with a request may resend it after a
timeout or a lost connection: within :data:`TTL_S` seconds, the same key with the same body returns
the first answer (header ``Idempotent-Replayed: true``) without running the model or counting its
predictions again. Keys are scoped by API key and route, so two clients never share an entry.

- Only successful (2xx) answers are stored: after an error, a retry runs again.
- The same key with a different body: 422 ``idempotency_key_reused``.
- The same key while the first request is still running: 409 ``idempotency_key_in_flight`` (retry).

The store is shared by the workers of one server (:class:`SharedIdempotencyStore`, an SQLite file in
the server's Prometheus multiprocess folder, named by the server's process id), so a retry that lands
on another worker is answered from it too; where that folder is not set (a test harness, a single
process) it is an LRU in the worker's memory (:class:`IdempotencyStore`). Both are bounded by
:data:`MAX_ENTRIES` and :data:`MAX_BYTES`. Nothing survives a restart of the server, and replicas do
not share it: route by the key (e.g. ingress-nginx ``upstream-hash-by: "$http_idempotency_key"``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from toolchain.serve.validation import RequestRejected

HEADER = b"idempotency-key"
REPLAYED_HEADER = (b"idempotent-replayed", b"true")
TTL_S = 3600.0
MAX_ENTRIES = 10_000
MAX_BYTES = 32 << 20
MAX_KEY_CHARS = 255


@dataclass
class Stored:
    fingerprint: bytes
    expires: float
    status: int = 0
    headers: tuple = ()
    body: bytes = b""

    @property
    def in_flight(self) -> bool:
        return self.status == 0

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + 200


def request_key(headers: dict[bytes, bytes]) -> str | None:
    """The client's idempotency key, or None; 400 for one that is empty, too long or not visible ASCII."""
    raw = headers.get(HEADER)
    if raw is None:
        return None
    key = raw.decode("latin-1").strip()
    if not 0 < len(key) <= MAX_KEY_CHARS or not all("!" <= ch <= "~" for ch in key):
        raise RequestRejected(400, "invalid_idempotency_key", f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} "
                              f"visible ASCII characters (got {len(key)} characters)")
    return key


def check_replayable(entry: Stored, fingerprint: bytes) -> None:
    """422 for the key reused with another body, 409 while its first request is still running."""
    if entry.fingerprint != fingerprint:
        raise RequestRejected(422, "idempotency_key_reused", "this Idempotency-Key was used with a different "
                              "request body; use a new key for a new request")
    if entry.in_flight:
        raise RequestRejected(409, "idempotency_key_in_flight", "a request with this Idempotency-Key is still "
                              "being processed; retry shortly", reason="conflict")


class IdempotencyStore:
    """Responses by (client, route, key): an LRU bounded in entries and bytes, entries expiring after ``ttl_s``."""

    def __init__(self, ttl_s: float = TTL_S, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.max_entries, self.max_bytes, self.clock = ttl_s, max_entries, max_bytes, clock
        self.entries: OrderedDict[bytes, Stored] = OrderedDict()
        self.bytes = 0

    @staticmethod
    def scope(client: str | None, route: str, key: str) -> bytes:
        return hashlib.sha256("\0".join((client or "", route, key)).encode("utf-8")).digest()

    @staticmethod
    def fingerprint(body: bytes) -> bytes:
        return hashlib.sha256(body).digest()

    def begin(self, scope: bytes, body: bytes) -> Stored | None:
        """The stored response to replay; or None, after marking the key in flight (call ``finish``)."""
        fingerprint = self.fingerprint(body)
        entry = self.entries.get(scope)
        if entry is not None and entry.expires <= self.clock():
            self.drop(scope)
            entry = None
        if entry is None:
            self.entries[scope] = Stored(fingerprint, self.clock() + self.ttl_s)
            self.evict()
            return None
        check_replayable(entry, fingerprint)
        self.entries.move_to_end(scope)
        return entry

    def finish(self, scope: bytes, status: int, headers: list, body: bytes) -> None:
        """Store a 2xx response for the key ``begin`` marked; forget the key otherwise."""
        entry = self.entries.get(scope)
        if entry is None or not entry.in_flight:
            return
        if not 200 <= status < 300:
            self.drop(scope)
            return
        entry.status, entry.headers, entry.body = status, tuple(headers), body
        self.bytes += entry.size
        self.evict()

    def abandon(self, scope: bytes) -> None:
        entry = self.entries.get(scope)
        if entry is not None and entry.in_flight:
            self.drop(scope)

    def drop(self, scope: bytes) -> None:
        entry = self.entries.pop(scope, None)
        if entry is not None and not entry.in_flight:
            self.bytes -= entry.size

    def evict(self) -> None:
        while self.entries and (len(self.entries) > self.max_entries or self.bytes > self.max_bytes):
            oldest = next(iter(self.entries))
            self.drop(oldest)


IN_FLIGHT_STALE_S = 120.0   # an in-flight mark older than this belongs to a worker that died mid-request

SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
    scope BLOB PRIMARY KEY, fingerprint BLOB NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    status INTEGER NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL)"""


class SharedIdempotencyStore(IdempotencyStore):
    """The same contract as :class:`IdempotencyStore`, in an SQLite file every worker of the server opens.

    The in-flight mark is the row itself (inserted only if absent, so two workers cannot both run a
    key); wall-clock times, since the workers do not share a monotonic clock.
    """

    def __init__(self, path: str, ttl_s: float = TTL_S, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 clock: Callable[[], float] = time.time):
        super().__init__(ttl_s, max_entries, max_bytes, clock)
        self.path = path
        self.db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")   # the store does not outlive the server anyway
        self.db.execute(SCHEMA)

    def begin(self, scope: bytes, body: bytes) -> Stored | None:
        fingerprint, now = self.fingerprint(body), self.clock()
        with self.db:
            self.db.execute("DELETE FROM responses WHERE scope = ? AND (expires <= ? OR (status = 0 AND created <= ?))",
                            (scope, now, now - IN_FLIGHT_STALE_S))
            inserted = self.db.execute("INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, 0, '[]', x'')",
                                       (scope, fingerprint, now, now + self.ttl_s)).rowcount
        if inserted:
            return None
        row = self.db.execute("SELECT fingerprint, expires, status, headers, body FROM responses WHERE scope = ?",
                              (scope,)).fetchone()
        if row is None:     # removed meanwhile by its worker (an error): this request may run
            return self.begin(scope, body)
        entry = Stored(row[0], row[1], row[2], tuple((bytes.fromhex(k), bytes.fromhex(v))
                                                     for k, v in json.loads(row[3])), row[4])
        check_replayable(entry, fingerprint)
        return entry

    def finish(self, scope: bytes, status: int, headers: list, body: bytes) -> None:
        if not 200 <= status < 300:
            self.abandon(scope)
            return
        encoded = json.dumps([[k.hex(), v.hex()] for k, v in headers])
        self.db.execute("UPDATE responses SET status = ?, headers = ?, body = ? WHERE scope = ? AND status = 0",
                        (status, encoded, body, scope))
        self.evict()

    def abandon(self, scope: bytes) -> None:
        self.db.execute("DELETE FROM responses WHERE scope = ? AND status = 0", (scope,))

    def evict(self) -> None:
        with self.db:
            self.db.execute("DELETE FROM responses WHERE expires <= ?", (self.clock(),))
            count, size = self.db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM responses").fetchone()
            while count > self.max_entries or size > self.max_bytes:
                oldest = self.db.execute("SELECT scope, LENGTH(body) FROM responses ORDER BY created LIMIT 1").fetchone()
                if oldest is None:
                    break
                self.db.execute("DELETE FROM responses WHERE scope = ?", (oldest[0],))
                count, size = count - 1, size - oldest[1]


def store_for_workers() -> IdempotencyStore:
    """The store shared by this server's workers, or a per-process one where no shared folder is set."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder or not os.path.isdir(folder):
        return IdempotencyStore()
    path = os.path.join(folder, f"toolchain-idempotency-{os.getppid()}.sqlite")
    try:
        return SharedIdempotencyStore(path)
    except sqlite3.Error as exc:
        logging.getLogger("toolchain.serve").error("idempotency store %s unusable (%s): per-worker store", path, exc)
        return IdempotencyStore()
