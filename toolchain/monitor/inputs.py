"""The monitor's inputs: a JSONL file, a folder of JSONL files that grows, or stdin; each keeps a position.

A line is one JSON object: ``{"text": "...", "source": "reuters", "timestamp": "2024-05-01T09:30:00Z",
"id": "..."}``; only ``text`` is required (``timestamp``: ISO 8601 or Unix seconds; ``source``: the
item's ticker, desk or publisher, sent as the request's ``source``, a metric label at the service;
``topic`` is that key's former name, still read). An item knows where it was read: its ``file`` (a path, or
``<stdin>``) and ``line``, together its ``location`` (``file:line``). A line that is
not such an object becomes a :class:`BadLine` naming its location and what is wrong: it is
reported and skipped, never fatal and never silently dropped. Blank lines hold nothing and are skipped.

Positions are byte offsets after the last complete line (files) or a line count (stdin). A file's
last line without a newline is read only when the file is final (not followed): a writer may still be
appending to it.
"""
from __future__ import annotations

import json
import os
import queue
import threading
from dataclasses import InitVar, dataclass
from datetime import datetime
from pathlib import Path

from toolchain.core.privacy import clip

QUOTE_CHARS = 60   # how much of a bad value an error message quotes


def quote(value) -> str:
    """The start of ``value``'s repr, cut where masking still recognises every address or number in it."""
    return clip(repr(value), QUOTE_CHARS)


STDIN = "<stdin>"
MAX_SOURCE_CHARS = 200      # the service's limit on the request's `source` (toolchain.serve.validation)
SOURCE_KEYS = ("source", "topic")      # an item's source, and that key's former name


@dataclass(frozen=True)
class NewsItem:
    file: str               # where it was read: the file, or <stdin>
    line: int               # 1-based line number in its file
    end: int                # position after this line: byte offset (files) or line count (stdin)
    text: str
    news_source: str | None = None   # the item's own "source" key (ticker, desk, publisher)
    timestamp: float | None = None
    item_id: str | None = None
    start: int = -1         # byte offset of this line (files)
    topic: InitVar[str | None] = None   # former name of news_source, in stdin lines an earlier version stored

    def __post_init__(self, topic: str | None) -> None:
        if topic is not None and self.news_source is None:
            object.__setattr__(self, "news_source", topic)

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class BadLine:
    file: str
    line: int
    end: int
    reason: str
    start: int = -1

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


def parse_line(raw: bytes, file: str, line: int, end: int) -> NewsItem | BadLine | None:
    """One JSONL line -> an item, a bad line naming the problem, or None for a blank line."""
    start = end - len(raw)

    def bad(reason: str) -> BadLine:
        return BadLine(file, line, end, reason, start)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return bad(f"not UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})")
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return bad(f"not JSON ({exc.msg} at column {exc.colno}): {clip(text.strip(), QUOTE_CHARS)!r}")
    if not isinstance(data, dict):
        return bad(f"not a JSON object but {type(data).__name__}: {clip(text.strip(), QUOTE_CHARS)!r}")
    return _item_from(data, bad, file, line, end, start)


def _item_from(data: dict, bad, file: str, line: int, end: int, start: int) -> NewsItem | BadLine:
    body = data.get("text")
    if not isinstance(body, str) or not body.strip():
        return bad(f"'text' must be a non-blank string, got {quote(body)}")
    try:
        news_source = item_source(data)
        stamp = parse_timestamp(data.get("timestamp"))
    except ValueError as exc:
        return bad(str(exc))
    item_id = data.get("id")
    return NewsItem(file, line, end, body, news_source, stamp, None if item_id is None else str(item_id), start)


def item_source(data: dict) -> str | None:
    """The item's ``source`` (or its former name ``topic``); ValueError naming the key when it is unusable."""
    given = {key: data[key] for key in SOURCE_KEYS if data.get(key) is not None}
    if len(given) == 2 and given["source"] != given["topic"]:
        raise ValueError(f"'source' {quote(given['source'])} and its former name 'topic' {quote(given['topic'])} "
                         "differ: give the item's source as 'source' only")
    for key, value in given.items():
        if not isinstance(value, str):
            raise ValueError(f"'{key}' must be a string, got {quote(value)}")
        if len(value) > MAX_SOURCE_CHARS:
            raise ValueError(f"'{key}' has {len(value)} characters; the service takes at most {MAX_SOURCE_CHARS}")
    return next(iter(given.values()), None) or None


def parse_timestamp(value) -> float | None:
    """ISO 8601 text or Unix seconds -> Unix seconds; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise ValueError(f"'timestamp' must be ISO 8601 or Unix seconds, got {quote(value)}")


class FileCursor:
    """Reads the complete lines of one file from a byte offset."""

    def __init__(self, path: Path, offset: int = 0, line: int = 0):
        self.path, self.offset, self.line = path, offset, line

    def read(self, limit: int, final: bool) -> list[NewsItem | BadLine]:
        records = []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            while len(records) < limit:
                raw = handle.readline()
                if not raw or (not raw.endswith(b"\n") and not final):
                    break
                self.offset += len(raw)
                self.line += 1
                record = parse_line(raw, str(self.path), self.line, self.offset)
                if record is not None:
                    records.append(record)
        return records

    def at_end(self) -> bool:
        return self.offset >= self.path.stat().st_size


def check_position(path: Path, saved: dict | None, warn) -> tuple[int, int]:
    """The saved (offset, line) of a file, or (0, 0) with a warning if it was replaced or truncated."""
    if not saved:
        return 0, 0
    stat = path.stat()
    if saved.get("inode") not in (None, stat.st_ino):
        warn(f"{path}: replaced since the last run (new inode); reading it from the start")
        return 0, 0
    if saved["offset"] > stat.st_size:
        warn(f"{path}: shorter ({stat.st_size} bytes) than the saved position {saved['offset']}; "
             "reading it from the start")
        return 0, 0
    return saved["offset"], saved["line"]


class FileInput:
    """One JSONL file; with ``follow``, waits for more lines like ``tail -f``."""

    def __init__(self, path: Path, positions: dict, follow: bool, warn):
        if not path.is_file():
            raise FileNotFoundError(f"news file {path} does not exist")
        self.follow = follow
        offset, line = check_position(path, positions.get(str(path)), warn)
        self.cursor = FileCursor(path, offset, line)

    def read(self, limit: int) -> list[NewsItem | BadLine]:
        return self.cursor.read(limit, final=not self.follow)

    @property
    def exhausted(self) -> bool:
        return not self.follow and self.cursor.at_end()

    def inodes(self) -> dict[str, int]:
        return {str(self.cursor.path): self.cursor.path.stat().st_ino}


class FolderInput:
    """Every file matching ``pattern`` in a folder, in name order; new files and lines are picked up."""

    def __init__(self, folder: Path, positions: dict, pattern: str, follow: bool, warn):
        if not folder.is_dir():
            raise FileNotFoundError(f"news folder {folder} does not exist")
        self.folder, self.pattern, self.follow, self.warn = folder, pattern, follow, warn
        self.positions = positions
        self.cursors: dict[str, FileCursor] = {}

    def _discover(self) -> list[FileCursor]:
        for path in sorted(self.folder.glob(self.pattern)):
            if path.is_file() and str(path) not in self.cursors:
                offset, line = check_position(path, self.positions.get(str(path)), self.warn)
                self.cursors[str(path)] = FileCursor(path, offset, line)
        return [self.cursors[name] for name in sorted(self.cursors)]

    def read(self, limit: int) -> list[NewsItem | BadLine]:
        records = []
        for cursor in self._discover():
            records += cursor.read(limit - len(records), final=not self.follow)
            if len(records) >= limit:
                break
        return records

    @property
    def exhausted(self) -> bool:
        return not self.follow and all(c.at_end() for c in self._discover())

    def inodes(self) -> dict[str, int]:
        return {name: c.path.stat().st_ino for name, c in self.cursors.items()}


class StdinInput:
    """Lines from a stream, read by a background thread; the position is the number of lines consumed.

    A restart skips that many lines, which is right only when the same stream is replayed
    (``cat archive.jsonl | toolchain monitor -``); use a file or folder for a durable position.
    """

    def __init__(self, stream, positions: dict, warn):
        saved = positions.get(STDIN) or {}
        self.line, self.skip = 0, saved.get("line", 0)
        if self.skip:
            warn(f"{STDIN}: skipping the first {self.skip} lines, consumed by the previous run")
        self.lines: queue.Queue = queue.Queue(maxsize=10_000)
        self.done = False
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.put(raw)
        self.lines.put(None)

    def read(self, limit: int) -> list[NewsItem | BadLine]:
        records = []
        while len(records) < limit and not self.done:
            try:
                raw = self.lines.get(timeout=0.05 if not records else 0)
            except queue.Empty:
                break
            if raw is None:
                self.done = True
                break
            records += self._take(raw)
        return records

    def _take(self, raw: bytes) -> list[NewsItem | BadLine]:
        self.line += 1
        if self.line <= self.skip:
            return []
        record = parse_line(raw, STDIN, self.line, self.line)
        return [] if record is None else [record]

    @property
    def exhausted(self) -> bool:
        return self.done

    def inodes(self) -> dict[str, int]:
        return {}


def open_input(spec: str, positions: dict, pattern: str, follow: bool, warn, stdin=None):
    """An input from a command-line argument: ``-`` (stdin), a folder, or a file."""
    if spec == "-":
        return StdinInput(stdin if stdin is not None else os.fdopen(0, "rb", closefd=False), positions, warn)
    path = Path(spec).resolve()
    if path.is_dir():
        return FolderInput(path, positions, pattern, follow, warn)
    return FileInput(path, positions, follow, warn)
