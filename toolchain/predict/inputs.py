"""The inputs of a predict run: files named by paths or globs, indexed into shards of a fixed number of rows.

A *row* is one record of an input file: a non-blank line of a JSONL file, a data row of a CSV file (one
record may span lines inside quotes), a row of a Parquet file. Rows are numbered from 0 in each file, and
``(file, row)`` is the key of every output row and bad row. A :class:`Shard` is the rows ``[start, end)``
of one file (``end - start`` = the run's shard size, the last one shorter); for JSONL and CSV it also
holds the byte range and first line number of those rows, so a worker reads only its own rows. The
index is a function of the file's bytes and the shard size alone: the same file gives the same shards,
whichever run, process or machine computes them.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from toolchain.core.errors import DataError

FORMATS = ("auto", "jsonl", "csv", "parquet")
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class InputFile:
    path: str                   # as given (after glob expansion): written in each row's `file`
    resolved: str               # absolute path
    fmt: str                    # jsonl | csv | parquet
    size: int
    mtime_ns: int
    columns: tuple[str, ...] = ()   # csv header, parquet schema (jsonl: unknown, per row)
    delimiter: str = ","

    @property
    def key(self) -> str:
        """The file's part of its shard names: its stem and a digest of its absolute path."""
        return f"{Path(self.path).stem}-{hashlib.sha1(self.resolved.encode()).hexdigest()[:8]}"

    def identity(self) -> dict:
        """What must not change while a run's shards are being written (its output's manifest records it)."""
        return {"path": self.resolved, "format": self.fmt, "size": self.size, "mtime_ns": self.mtime_ns}


@dataclass(frozen=True)
class Shard:
    file: InputFile
    start: int                  # first row (0-based, in its file)
    end: int                    # one past the last row
    offset: int = 0             # byte offset of row `start` (jsonl, csv)
    stop: int = 0               # byte offset after row `end - 1` (jsonl, csv)
    line: int = 1               # line number at `offset` (jsonl, csv)

    @property
    def name(self) -> str:
        return f"{self.file.key}.rows-{self.start:09d}-{self.end:09d}"

    @property
    def rows(self) -> int:
        return self.end - self.start

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Shard":
        data = json.loads(text)
        file = data.pop("file")
        return cls(InputFile(**{**file, "columns": tuple(file["columns"])}), **data)


@dataclass
class Plan:
    files: list[InputFile]
    shards: list[Shard] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(shard.rows for shard in self.shards)


def expand(specs: list[str]) -> list[str]:
    """Each path or glob (``*``, ``?``, ``[...]``, ``**``) as files, sorted within a glob, each file once."""
    paths: list[str] = []
    for spec in specs:
        if glob.has_magic(spec):
            matched = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not matched:
                raise DataError(f"--input {spec}: no file matches")
        elif os.path.isdir(spec):
            raise DataError(f"--input {spec}: is a folder; give its files as a glob, e.g. '{spec}/*.jsonl'")
        elif not os.path.isfile(spec):
            raise DataError(f"--input {spec}: file not found")
        else:
            matched = [spec]
        paths += [p for p in matched if os.path.abspath(p) not in {os.path.abspath(q) for q in paths}]
    return paths


def detect_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = Path(path).suffix.lower()
    for name, suffixes in (("jsonl", (".jsonl", ".json", ".ndjson")), ("csv", (".csv", ".tsv")),
                           ("parquet", (".parquet", ".pq"))):
        if suffix in suffixes:
            return name
    raise DataError(f"{path}: cannot tell the format from the name; give --format jsonl, csv or parquet")


def open_input(path: str, fmt: str) -> InputFile:
    stat = os.stat(path)
    fmt = detect_format(path, fmt)
    base = InputFile(path, os.path.abspath(path), fmt, stat.st_size, stat.st_mtime_ns)
    if fmt == "csv":
        delimiter = "\t" if Path(path).suffix.lower() == ".tsv" else ","
        return InputFile(**{**asdict(base), "columns": tuple(csv_header(path, delimiter)), "delimiter": delimiter})
    if fmt == "parquet":
        return InputFile(**{**asdict(base), "columns": tuple(parquet_file(path).schema_arrow.names)})
    return base


def plan(specs: list[str], fmt: str, shard_rows: int) -> Plan:
    """Every input file opened and cut into shards of ``shard_rows`` rows."""
    files = [open_input(path, fmt) for path in expand(specs)]
    result = Plan(files)
    for file in files:
        result.shards += list(index(file, shard_rows))
    return result


def index(file: InputFile, shard_rows: int):
    if file.fmt == "parquet":
        total = parquet_file(file.resolved).metadata.num_rows
        for start in range(0, total, shard_rows):
            yield Shard(file, start, min(total, start + shard_rows))
        return
    records = jsonl_records(file.resolved) if file.fmt == "jsonl" else csv_records(file.resolved, file.delimiter)
    start, offset, line, count = 0, None, 1, 0
    for begin, end, first_line, _ in records:
        if offset is None:
            offset, line = begin, first_line
        count += 1
        if count - start == shard_rows:
            yield Shard(file, start, count, offset, end, line)
            start, offset = count, None
    if count > start:
        yield Shard(file, start, count, offset, end, line)


def numbered_lines(path: str, offset: int = 0, line: int = 1):
    """(start byte, end byte, line number, raw bytes) of each line from ``offset`` (a leading BOM skipped)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        position = offset
        for raw in handle:
            begin = position
            position += len(raw)
            if begin == 0 and raw.startswith(UTF8_BOM):
                raw, begin = raw[len(UTF8_BOM):], len(UTF8_BOM)
            yield begin, position, line, raw
            line += 1


def jsonl_records(path: str, offset: int = 0, line: int = 1, stop: int | None = None):
    """(start byte, end byte, line number, raw line) of each non-blank line: the JSONL rows."""
    for begin, end, number, raw in numbered_lines(path, offset, line):
        if stop is not None and begin >= stop:
            return
        if raw.strip():
            yield begin, end, number, raw


def csv_records(path: str, delimiter: str, offset: int = 0, line: int = 1, stop: int | None = None,
                header: bool = True):
    """(start byte, end byte, first line, fields) of each CSV data row (the header skipped at offset 0).

    The csv module pulls one line at a time from the iterator below, so after each record the bytes
    consumed are exactly that record's end. Bytes that are not UTF-8 become lone surrogates
    (``surrogateescape``): the reader reports such a row as unreadable instead of failing the file."""
    consumed = {"end": offset, "line": line}

    def lines():
        for begin, end, number, raw in numbered_lines(path, offset, line):
            if stop is not None and begin >= stop:
                return
            consumed["end"], consumed["line"] = end, number + 1
            yield raw.decode("utf-8", "surrogateescape")

    reader = csv.reader(lines(), delimiter=delimiter)
    begin, first, skip = offset, line, header and offset == 0
    try:
        for fields in reader:
            if fields and not skip:
                yield begin, consumed["end"], first, fields
            skip = skip and not fields
            begin, first = consumed["end"], consumed["line"]
    except csv.Error as exc:
        raise DataError(f"{path}:{consumed['line'] - 1}: malformed CSV ({exc})") from None


def csv_header(path: str, delimiter: str) -> list[str]:
    with open(path, "rb") as handle:
        head = handle.readline()
    first = head[len(UTF8_BOM):] if head.startswith(UTF8_BOM) else head
    try:
        names = next(csv.reader([first.decode("utf-8")], delimiter=delimiter), [])
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:1: the header is not valid UTF-8 (byte {exc.start})") from None
    if not names:
        raise DataError(f"{path}:1: no header row; a CSV input starts with its column names")
    return names


def parquet_file(path: str):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:   # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
