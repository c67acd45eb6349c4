"""API keys: read from a file or the environment, kept only as SHA-256 digests, compared in constant time.

Sources (both may be given; their keys are merged):

- ``TOOLCHAIN_API_KEYS_FILE``: a file (in production a mounted Kubernetes Secret) with one entry per
  line: a plain key, or the hash of one written ``sha256:<64 hex digits>``. Blank lines and lines
  starting with ``#`` are skipped.
- ``TOOLCHAIN_API_KEYS``: the same entries, comma-separated.

Clients send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

log = logging.getLogger("toolchain.serve")

KEYS_FILE_ENV = "TOOLCHAIN_API_KEYS_FILE"
KEYS_ENV = "TOOLCHAIN_API_KEYS"
HASH_PREFIX = "sha256:"


class AuthConfigError(ValueError):
    """The API-key configuration is unusable (missing file, malformed hash, no keys while auth is on)."""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_entry(entry: str, where: str) -> bytes:
    """One key or ``sha256:<hex>`` hash -> its 32-byte digest."""
    if entry.lower().startswith(HASH_PREFIX):
        hex_part = entry[len(HASH_PREFIX):].strip()
        try:
            value = bytes.fromhex(hex_part)
        except ValueError:
            value = b""
        if len(value) != 32:
            raise AuthConfigError(f"{where}: {entry[:16]}... is not a valid sha256:<64 hex digits> hash")
        return value
    return digest(entry)


def parse_entries(text: str, where: str, separator: str | None = None) -> list[bytes]:
    items = text.split(separator) if separator else text.splitlines()
    entries = [item.strip() for item in items]
    return [parse_entry(e, where) for e in entries if e and not e.startswith("#")]


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


def load_keys(environ: dict[str, str] | None = None) -> KeyRing:
    environ = os.environ if environ is None else environ
    digests: list[bytes] = []
    path = environ.get(KEYS_FILE_ENV)
    if path:
        file = Path(path)
        if not file.is_file():
            raise AuthConfigError(f"{KEYS_FILE_ENV}={path}: no such file")
        digests += parse_entries(file.read_text(encoding="utf-8"), f"{KEYS_FILE_ENV}={path}")
    if environ.get(KEYS_ENV):
        digests += parse_entries(environ[KEYS_ENV], KEYS_ENV, separator=",")
    return KeyRing(digests)


def check_configuration(auth_on: bool, environ: dict[str, str] | None = None) -> KeyRing:
    """The accepted keys; refuses auth without any key, and warns loudly when auth is off."""
    if not auth_on:
        log.warning("TOOLCHAIN_AUTH=false: inference routes accept requests without an API key")
        return KeyRing([])
    keys = load_keys(environ)
    if not len(keys):
        raise AuthConfigError(f"auth is on but no API keys are configured: set {KEYS_FILE_ENV} (one key or "
                              f"sha256:<hex> per line) or {KEYS_ENV}; or, for local development only, "
                              "TOOLCHAIN_AUTH=false")
    return keys


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (lower-cased header names)."""
    auth = headers.get(b"authorization", b"").decode("latin-1").strip()
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return key or None


def hash_key(key: str) -> str:
    """The ``sha256:<hex>`` line to store in a keys file instead of the key itself."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()
