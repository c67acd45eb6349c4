"""The feeder's durable state: acknowledged positions, and the write-ahead of the batch being sent.

Layout of the state file (JSON)::

    {"version": 2,
     "feed_id": HEX,                     # random, made with the state: prefixes every Idempotency-Key
     "batches": N,                       # batches begun so far (numbers the keys)
     "positions": {FILE: {"offset": BYTES, "line": N, "inode": INODE}},     # acknowledged up to here
     "outputs": {FILE: BYTES},           # committed length of the predictions / bad-lines files
     "pending": null | {                 # the write-ahead of the batch being sent
        "batch": N,
        "ranges": [RANGE, ...],          # exactly which lines it holds (toolchain.monitor.batch)
        "end": {FILE: {...}},            # the positions once it is committed
        "outputs": {FILE: BYTES},        # output lengths when it began: a restart cuts back to them
        "bad_lines": N,                  # its bad lines
        "requests": N,                   # Idempotency-Keys issued for it
        "acked": [{"key": KEY, "items": [I, ...], "rows": [PREDICTION, ...]}],   # answered requests
        "rejected": [I, ...], "skipped": [I, ...],     # refused by the service / dropped in doubt
        "attempting": null | {"key": KEY, "items": [I, ...], "source": SOURCE}},  # sent, not yet answered
     "sent_items": N, "bad_lines": N, "rejected_items": N, "uncertain_items": N}

Items are numbered by their index in the batch's canonical order. Every change is written to a
temporary file, flushed with fsync and renamed over the old one (then the folder is fsynced), so a
crash leaves either the old or the new state, never a torn one. A version-1 file (written before the
batch's lines were recorded) is read and upgraded: its pending batch is the lines from its positions
to its ends, which is exactly what version 1 sent.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from toolchain.core.artifacts import atomic_write_text

STATE_VERSION = 2


class StateError(ValueError):
    """The state file exists but cannot be used (unreadable, another version, wrong shape)."""


@dataclass
class FeedState:
    positions: dict[str, dict] = field(default_factory=dict)
    pending: dict | None = None
    sent_items: int = 0
    bad_lines: int = 0
    rejected_items: int = 0
    uncertain_items: int = 0
    feed_id: str = field(default_factory=lambda: secrets.token_hex(8))
    batches: int = 0
    outputs: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> "FeedState":
        if path is None or not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StateError(f"state file {path} is unreadable ({exc}); move it away to start over") from None
        version = data.get("version") if isinstance(data, dict) else "?"
        if version == 1:
            data = upgrade_v1(data, path)
        elif version != STATE_VERSION:
            raise StateError(f"state file {path} has version {version}, expected {STATE_VERSION}")
        data.pop("version")
        try:
            return cls(**data)
        except TypeError as exc:
            raise StateError(f"state file {path} has an unexpected layout: {exc}") from None

    def save(self, path: Path | None) -> None:
        if path is not None:
            write_durably(path, json.dumps({"version": STATE_VERSION, **asdict(self)}, indent=1) + "\n")

    def resume_positions(self) -> dict[str, dict]:
        """Where the inputs read on from: after the pending batch, which is replayed from its ranges."""
        return {**self.positions, **(self.pending or {}).get("end", {})}

    def begin(self, ranges: list[dict], end: dict[str, dict], outputs: dict[str, int], bad_lines: int) -> None:
        """Write-ahead: the batch of ``ranges`` is about to be sent."""
        self.batches += 1
        self.pending = {"batch": self.batches, "ranges": ranges, "end": end, "outputs": outputs,
                        "bad_lines": bad_lines, "requests": 0, "acked": [], "rejected": [], "skipped": [],
                        "attempting": None}

    def next_key(self) -> str:
        """A new Idempotency-Key for a request of the pending batch (unique to this state file)."""
        self.pending["requests"] += 1
        return f"{self.feed_id}-{self.pending['batch']}-{self.pending['requests']}"

    def settled(self) -> set[int]:
        """The pending batch's items already answered, refused or dropped."""
        pending = self.pending
        return {i for a in pending["acked"] for i in a["items"]} | set(pending["rejected"]) | set(pending["skipped"])

    def commit(self, outputs: dict[str, int]) -> None:
        """The whole pending batch is settled: its ends become the positions, its counts are added."""
        pending = self.pending
        self.positions.update(pending["end"])
        self.outputs.update(outputs)
        self.sent_items += sum(len(a["items"]) for a in pending["acked"])
        self.rejected_items += len(pending["rejected"])
        self.uncertain_items += len(pending["skipped"])
        self.bad_lines += pending["bad_lines"]
        self.pending = None


def upgrade_v1(data: dict, path: Path) -> dict:
    """A version-1 state as version 2; its pending batch becomes ranges from the positions to the ends."""
    pending = data.get("pending")
    if pending:
        from toolchain.monitor.inputs import STDIN

        if STDIN in pending.get("end", {}):
            raise StateError(f"state file {path} (version 1) has a pending batch read from stdin, which cannot "
                             "be read again; finish it with the earlier version, or move the file away")
        ranges = []
        for file, end in pending["end"].items():
            start = data["positions"].get(file) or {}
            same = start.get("inode") in (None, end.get("inode"))
            ranges.append({"file": file, "inode": end.get("inode"), "start": start.get("offset", 0) if same else 0,
                           "line": start.get("line", 0) if same else 0, "end": end["offset"], "records": None,
                           "sha256": None})
        data["pending"] = {"batch": 0, "ranges": ranges, "end": pending["end"], "outputs": {}, "bad_lines": None,
                           "requests": 0, "acked": [], "rejected": [], "skipped": [], "attempting": None,
                           "legacy": {"sent": pending.get("sent", []), "attempting": pending.get("attempting")}}
    return {**data, "version": STATE_VERSION}


def write_durably(path: Path, text: str) -> None:
    """Temp file + fsync + rename + fsync of the folder."""
    atomic_write_text(path, text)
