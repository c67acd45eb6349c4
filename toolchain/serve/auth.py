"""API keys: read from a file or the environment, kept only as SHA-256 digests, compared in constant time.

Sources (both may be given; their keys are merged):

- ``TOOLCHAIN_API_KEYS_FILE``: a file (in production a mounted Kubernetes Secret) with one entry per
  line. Blank lines and lines starting with ``#`` are skipped. The file is watched: when its
  modification time, size or inode changes (a Secret update swaps a symlink: a new inode), it is read
  again, at most every :data:`RELOAD_CHECK_S` seconds, on the request path (one ``stat``). A new file
  that cannot be used (a bad line, no key, unreadable, gone) keeps the keys in use and logs an error.
- ``TOOLCHAIN_API_KEYS``: the same entries, comma-separated (read once, at start-up).

Entry format (unambiguous):

- ``sha256:<64 hex digits>``: the SHA-256 hash of a key (``hash_key`` prints one);
- ``plain:<key>``: a plain key, taken as written after the prefix (surrounding spaces stripped);
  the only way to write a plain key that itself starts with ``sha256:`` or another ``<algorithm>:``;
- anything else: a plain key, as before this format had prefixes (so ``team:secret`` still works).

A line that starts with ``sha256:`` but is not a valid hash, or with the name of another hash
algorithm and a colon (``sha512:``, ``md5:``, ...), is refused with a message naming its line: it
is either a broken hash or a plain key that must be written ``plain:<key>``.

Clients send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("toolchain.serve")

KEYS_FILE_ENV = "TOOLCHAIN_API_KEYS_FILE"
KEYS_ENV = "TOOLCHAIN_API_KEYS"
HASH_PREFIX = "sha256:"
PLAIN_PREFIX = "plain:"
RELOAD_CHECK_S = 2.0
OTHER_HASHES = frozenset({"md5", "sha1", "sha224", "sha384", "sha512", "sha3", "sha3_256", "sha3_512", "sha512_256",
                          "blake2b", "blake2s", "bcrypt", "scrypt", "argon2", "argon2id", "pbkdf2", "pbkdf2_sha256"})


class AuthConfigError(ValueError):
    """The API-key configuration is unusable (missing file, malformed hash, no keys while auth is on)."""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_entry(entry: str, where: str) -> bytes:
    """One entry (``sha256:<hex>``, ``plain:<key>`` or a bare plain key) -> its 32-byte digest."""
    scheme, colon, rest = entry.partition(":")
    scheme = scheme.strip().lower() if colon else ""
    if scheme == PLAIN_PREFIX[:-1]:
        if not rest.strip():
            raise AuthConfigError(f"{where}: empty key after {PLAIN_PREFIX!r}")
        return digest(rest.strip())
    if scheme == HASH_PREFIX[:-1]:
        try:
            value = bytes.fromhex(rest.strip())
        except ValueError:
            value = b""
        if len(value) != 32:
            raise AuthConfigError(f"{where}: an entry starting with {HASH_PREFIX!r} must be sha256:<64 hex digits> "
                                  f"(this one has {len(entry)} characters); if it is a plain key, write it as "
                                  f"{PLAIN_PREFIX}<key>")
        return value
    if scheme in OTHER_HASHES:
        raise AuthConfigError(f"{where}: {scheme}: hashes are not supported, only {HASH_PREFIX}<64 hex digits>; "
                              f"if it is a plain key, write it as {PLAIN_PREFIX}<key>")
    return digest(entry)


def parse_entries(text: str, where: str, separator: str | None = None) -> list[bytes]:
    items = text.split(separator) if separator else text.splitlines()
    label = "entry" if separator else "line"
    return [parse_entry(item.strip(), f"{where} {label} {number}") for number, item in enumerate(items, 1)
            if item.strip() and not item.strip().startswith("#")]


class KeyRing:
    """The accepted keys as digests; ``check`` compares against every one in constant time."""

    def __init__(self, digests: list[bytes]):
        self._digests = tuple(dict.fromkeys(digests))

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, presented: str | None) -> bool:
        if not presented:
            return False
        candidate = digest(presented)
        matched = False
        for stored in self._digests:  # no early exit: the time does not depend on which key matched
            matched |= hmac.compare_digest(candidate, stored)
        return matched


def read_keys_file(path: str) -> list[bytes]:
    file = Path(path)
    if not file.is_file():
        raise AuthConfigError(f"{KEYS_FILE_ENV}={path}: no such file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"{KEYS_FILE_ENV}={path}: cannot be read ({exc})") from None
    return parse_entries(text, f"{KEYS_FILE_ENV}={path}")


def load_keys(environ: dict[str, str] | None = None) -> KeyRing:
    environ = os.environ if environ is None else environ
    digests: list[bytes] = []
    if environ.get(KEYS_FILE_ENV):
        digests += read_keys_file(environ[KEYS_FILE_ENV])
    if environ.get(KEYS_ENV):
        digests += parse_entries(environ[KEYS_ENV], KEYS_ENV, separator=",")
    return KeyRing(digests)


def file_signature(path: str) -> tuple | None:
    """What tells a changed file: inode, device, size, modification time (None when it is gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


class ReloadingKeys:
    """The accepted keys, re-read from ``TOOLCHAIN_API_KEYS_FILE`` when the file changes.

    ``check`` looks at the file at most every ``check_every_s`` seconds (one ``stat``); a changed file
    is parsed in full before it replaces the keys, so a request sees either the old or the new set. A new
    file without a single usable key, or with a bad line, keeps the old keys and is reported once.
    """

    def __init__(self, environ: dict[str, str] | None = None, check_every_s: float = RELOAD_CHECK_S,
                 clock: Callable[[], float] = time.monotonic):
        environ = dict(os.environ if environ is None else environ)
        self.path = environ.get(KEYS_FILE_ENV) or None
        self.env_digests = parse_entries(environ[KEYS_ENV], KEYS_ENV, separator=",") if environ.get(KEYS_ENV) else []
        self.check_every_s, self.clock = check_every_s, clock
        self.lock = threading.Lock()
        self.signature = file_signature(self.path) if self.path else None
        self.ring = KeyRing((read_keys_file(self.path) if self.path else []) + self.env_digests)
        self.next_check = clock() + check_every_s

    def __len__(self) -> int:
        return len(self.ring)

    def check(self, presented: str | None) -> bool:
        self.refresh()
        return self.ring.check(presented)

    def refresh(self) -> None:
        if self.path is None or self.clock() < self.next_check or not self.lock.acquire(blocking=False):
            return
        try:
            self.next_check = self.clock() + self.check_every_s
            signature = file_signature(self.path)
            if signature != self.signature:
                self.reload(signature)
        finally:
            self.lock.release()

    def reload(self, signature: tuple | None) -> None:
        self.signature = signature  # a bad file is reported once; the next change is looked at again
        try:
            file_digests = read_keys_file(self.path)
            if not file_digests:
                raise AuthConfigError(f"{KEYS_FILE_ENV}={self.path}: no key in the file")
        except AuthConfigError as exc:
            log.error("API keys not reloaded, keeping the %d keys in use: %s", len(self.ring), exc)
            return
        if file_signature(self.path) != signature:  # changed while being read: read it on the next check
            self.signature = None
            return
        self.ring = KeyRing(file_digests + self.env_digests)
        log.info("API keys reloaded from %s: %d keys", self.path, len(self.ring))


def check_configuration(auth_on: bool, environ: dict[str, str] | None = None) -> KeyRing:
    """The accepted keys; refuses auth without any key, and warns loudly when auth is off."""
    if not auth_on:
        log.warning("TOOLCHAIN_AUTH=false: inference routes accept requests without an API key")
        return KeyRing([])
    keys = load_keys(environ)
    if not len(keys):
        raise AuthConfigError(f"auth is on but no API keys are configured: set {KEYS_FILE_ENV} (one key, "
                              f"plain:<key> or sha256:<hex> per line) or {KEYS_ENV}; or, for local development "
                              "only, TOOLCHAIN_AUTH=false")
    return keys


def presented_key(headers) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (lower-cased header names).

    ``headers`` is the ASGI list of (name, value) pairs, or a dict. ``Authorization`` wins over
    ``X-API-Key``; a header sent twice is ambiguous (which one would a proxy in front have checked?)
    and presents no key.
    """
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
    values: dict[bytes, list[bytes]] = {}
    for name, value in pairs:
        if name in (b"authorization", b"x-api-key"):
            values.setdefault(name, []).append(value)
    if any(len(found) > 1 for found in values.values()):
        return None
    auth = values.get(b"authorization", [b""])[0].decode("latin-1").strip()
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    key = values.get(b"x-api-key", [b""])[0].decode("latin-1").strip()
    return key or None


def hash_key(key: str) -> str:
    """The ``sha256:<hex>`` line to store in a keys file instead of the key itself."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()
