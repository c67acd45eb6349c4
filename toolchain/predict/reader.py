"""Read one shard's rows: each a text to score with its key and carried columns, or a bad row with its reason.

A row is bad when its text cannot be scored as the service would score it: a line that is not UTF-8 or
not a JSON object, a missing text, a text that is not a string, empty or whitespace-only text, or a lone
surrogate (what ``/classify`` answers with a 422). A bad row is reported with its location (file:line,
or the row of a Parquet file) and the reason, never scored, never fatal.

Carried columns (``--keep``, the id column) are written as text: a string as it is, another JSON value
as its JSON, a Parquet value as its string form (a timestamp: ISO 8601), a missing one as null; so every
shard of every input has one schema.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from toolchain.core.privacy import clip
from toolchain.predict.inputs import Shard, csv_records, jsonl_records, parquet_file

QUOTE_CHARS = 60


@dataclass(frozen=True)
class Columns:
    """Which input columns a run reads."""
    text: str = "text"
    id: str | None = "id"
    keep: tuple[str, ...] = ()


@dataclass
class BadRow:
    file: str
    row: int
    line: int | None
    reason: str

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else f"{self.file}: row {self.row}"

    def record(self) -> dict:
        return {"file": self.file, "row": self.row, "line": self.line, "location": self.location,
                "reason": self.reason}


@dataclass
class ShardRows:
    """A shard's good rows (parallel lists, in row order) and its bad rows."""
    rows: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    kept: dict[str, list] = field(default_factory=dict)
    bad: list[BadRow] = field(default_factory=list)


class Unreadable(ValueError):
    """A row that cannot be scored; the message is the reason."""


def quote(value) -> str:
    return clip(repr(value), QUOTE_CHARS)


def has_surrogate(value: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in value) if value and "\ud800" <= max(value) else False


def checked_text(value, column: str) -> str:
    """The text as ``/classify`` would accept it, or Unreadable naming what is wrong."""
    if value is None:
        raise Unreadable(f"no text: '{column}' is missing or null")
    if not isinstance(value, str):
        raise Unreadable(f"'{column}' must be a string, got {type(value).__name__} {quote(value)}")
    if not value.strip():
        raise Unreadable(f"'{column}' is empty or whitespace only ({quote(value)})")
    if has_surrogate(value):
        raise Unreadable(f"'{column}' is not valid Unicode text (bytes that are not UTF-8, or a lone surrogate)")
    return value


def carried(value, column: str) -> str | None:
    """A carried column's value as text (see the module docstring)."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False) if isinstance(value, (bool, int, float, list, dict)) else \
            value.isoformat() if hasattr(value, "isoformat") else str(value)
    if has_surrogate(value):
        raise Unreadable(f"'{column}' is not valid Unicode text (bytes that are not UTF-8, or a lone surrogate)")
    return value


def add_row(out: ShardRows, columns: Columns, row: int, get, where: tuple[str, int, int | None]) -> None:
    """Append the row whose values ``get(column)`` returns, or its bad row."""
    try:
        text = checked_text(get(columns.text), columns.text)
        identifier = carried(get(columns.id), columns.id) if columns.id else None
        kept = {name: carried(get(name), name) for name in columns.keep}
    except Unreadable as exc:
        out.bad.append(BadRow(where[0], row, where[2], str(exc)))
        return
    out.rows.append(row)
    out.texts.append(text)
    out.ids.append(identifier)
    for name, value in kept.items():
        out.kept.setdefault(name, []).append(value)


def read_shard(shard: Shard, columns: Columns) -> ShardRows:
    out = ShardRows(kept={name: [] for name in columns.keep})
    reader = {"jsonl": jsonl_rows, "csv": csv_rows, "parquet": parquet_rows}[shard.file.fmt]
    reader(shard, columns, out)
    read = len(out.rows) + len(out.bad)
    if read != shard.rows:
        raise RuntimeError(f"{shard.file.path}: read {read} rows of shard {shard.name} ({shard.rows} indexed): "
                           "the file changed while the run was reading it")
    return out


def jsonl_rows(shard: Shard, columns: Columns, out: ShardRows) -> None:
    records = jsonl_records(shard.file.resolved, shard.offset, shard.line, shard.stop)
    for row, (_, _, line, raw) in enumerate(records, start=shard.start):
        where = (shard.file.path, row, line)
        try:
            record = parsed_json(raw)
        except Unreadable as exc:
            out.bad.append(BadRow(shard.file.path, row, line, str(exc)))
            continue
        add_row(out, columns, row, record.get, where)


def parsed_json(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not valid UTF-8 (byte {exc.start} of the line)") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Unreadable(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise Unreadable(f"expected a JSON object, got {type(record).__name__} {quote(record)}")
    return record


def csv_rows(shard: Shard, columns: Columns, out: ShardRows) -> None:
    header = shard.file.columns
    records = csv_records(shard.file.resolved, shard.file.delimiter, shard.offset, shard.line, shard.stop,
                          header=False)
    for row, (_, _, line, fields) in enumerate(records, start=shard.start):
        values = dict(zip(header, fields))
        add_row(out, columns, row, values.get, (shard.file.path, row, line))


def parquet_rows(shard: Shard, columns: Columns, out: ShardRows) -> None:
    """The shard's rows from the row groups that hold them (never the whole file)."""
    source = parquet_file(shard.file.resolved)
    wanted = [c for c in dict.fromkeys([columns.text, columns.id, *columns.keep]) if c in shard.file.columns]
    first, groups = 0, []
    for index in range(source.metadata.num_row_groups):
        size = source.metadata.row_group(index).num_rows
        if first < shard.end and first + size > shard.start:
            groups.append((index, first))
        first += size
    if not groups:
        return
    table = source.read_row_groups([g for g, _ in groups], columns=wanted)
    table = table.slice(shard.start - groups[0][1], shard.rows)
    values = {name: table.column(name).to_pylist() for name in wanted}
    for offset in range(table.num_rows):
        add_row(out, columns, shard.start + offset, lambda name: values[name][offset] if name in values else None,
                (shard.file.path, shard.start + offset, None))
