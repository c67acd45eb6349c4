"""The feeder's durable position: which lines the service has acknowledged, written atomically.

Layout of the state file (JSON)::

    {"version": 1,
     "positions": {SOURCE: {"offset": BYTES, "line": N, "inode": INODE}},   # acknowledged up to here
     "pending": null | {"end": {SOURCE: {...}},      # the batch being sent: from positions to end
                        "sent": [GROUP, ...],         # its topic groups the service acknowledged
                        "attempting": GROUP | null},  # a group whose request may have reached the service
     "sent_items": N, "bad_lines": N, "rejected_items": N}

Every change is written to a temporary file, flushed with fsync and renamed over the old one (then
the folder is fsynced), so a crash leaves either the old or the new state, never a torn one.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from toolchain.artifacts import atomic_write_text

STATE_VERSION = 1


class StateError(ValueError):
    """The state file exists but cannot be used (unreadable, another version, wrong shape)."""


@dataclass
class FeedState:
    positions: dict[str, dict] = field(default_factory=dict)
    pending: dict | None = None
    sent_items: int = 0
    bad_lines: int = 0
    rejected_items: int = 0

    @classmethod
    def load(cls, path: Path | None) -> "FeedState":
        if path is None or not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StateError(f"state file {path} is unreadable ({exc}); move it away to start over") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise StateError(f"state file {path} has version {data.get('version') if isinstance(data, dict) else '?'}"
                             f", expected {STATE_VERSION}")
        data.pop("version")
        try:
            return cls(**data)
        except TypeError as exc:
            raise StateError(f"state file {path} has an unexpected layout: {exc}") from None

    def save(self, path: Path | None) -> None:
        if path is not None:
            write_durably(path, json.dumps({"version": STATE_VERSION, **asdict(self)}, indent=1) + "\n")

    def begin(self, end: dict[str, dict]) -> None:
        """Write-ahead: the batch up to ``end`` is about to be sent."""
        self.pending = {"end": end, "sent": [], "attempting": None}

    def commit(self, items: int) -> None:
        """The whole pending batch was acknowledged: its end becomes the position."""
        self.positions.update(self.pending["end"])
        self.pending = None
        self.sent_items += items


def write_durably(path: Path, text: str) -> None:
    """Temp file + fsync + rename + fsync of the folder."""
    atomic_write_text(path, text)
