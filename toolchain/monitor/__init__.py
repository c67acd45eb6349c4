"""`toolchain monitor INPUT... --url URL --state FILE`: stream news items to the service.

Reads JSONL news items (``text``, optional ``source``, ``timestamp``, ``id``; ``topic`` is the former name
of ``source``) from its inputs (:mod:`toolchain.monitor.inputs`): files, folders that grow (new files and
appended lines are picked up) or stdin (``-``); sends them to the service's ``/classify`` in batches, one
request per news source (the request's ``source``, a metric label at the service), with the API key and an
Idempotency-Key; retries with backoff on 5xx/429/connection errors (up to ``--give-up-after``, then stops
with its place kept); records each batch's exact lines before sending it and commits its position durably
after; prints rolling tables of sentiment share by predicted topic (the service's ``topic`` of each
prediction, from a model with a topic head) and by news source, and at the end names the predicted topics
whose negative share rose most (:mod:`toolchain.monitor.table`). Bad lines are reported with their location
(file:line) and skipped.
Nothing is lost or repeated across kills and restarts: see :mod:`toolchain.monitor.feeder`.

    toolchain monitor news/ --url https://sentiment.example.com --api-key-file key.txt --state feed.json
    tail -F wire.jsonl | toolchain monitor - --url http://127.0.0.1:3000 --source wire

The CLI handler (arguments, run) is :mod:`toolchain.commands.monitor`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

KEY_ENV = "TOOLCHAIN_API_KEY"
URL_ENV = "TOOLCHAIN_URL"


def check_url(url: str, allow_insecure_http: bool = False) -> None:
    """https://, or http:// to a loopback host (127.0.0.0/8, ::1, localhost) unless explicitly allowed."""
    from urllib.parse import urlsplit

    from toolchain.monitor.client import MonitorError

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MonitorError(f"--url must be http(s)://HOST[:PORT], got {url!r}")
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback(parts.hostname):
        raise MonitorError(f"--url {url} is plain http:// to {parts.hostname}, which is not this machine: the API key "
                           "and the news would travel unencrypted. Use https://, or pass --allow-insecure-http if "
                           "the network is trusted")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def read_key(path: Path | None) -> str | None:
    from toolchain.monitor.client import MonitorError

    if path is None:
        return os.environ.get(KEY_ENV) or None
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise MonitorError(f"cannot read the API key file {path}: {exc.strerror}") from None
    if not key:
        raise MonitorError(f"the API key file {path} is empty")
    return key


def warn(message: str) -> None:
    print(f"toolchain monitor: {message}", file=sys.stderr, flush=True)


def show(text: str) -> None:
    print(text + "\n", flush=True)
