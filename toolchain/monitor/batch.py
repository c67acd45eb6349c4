"""A batch's identity in the write-ahead: exactly which lines it holds, so a restart replays exactly those.

A batch takes, from each file it reads, one contiguous run of complete lines (a cursor only moves
forward). It is recorded as one *range* per file, in the order the batch first read them::

    {"file": PATH, "inode": INODE, "start": BYTES, "end": BYTES, "line": N,     # N: lines before start
     "records": COUNT, "sha256": HEX}                                            # of the bytes [start, end)

Lines read from stdin cannot be read again, so they are stored whole: ``{"file": "<stdin>",
"stored": [RECORD, ...]}``. These are the only texts the state file holds, unmasked because a resend
must be the very request first sent; they leave it when the batch is committed. The batch's
*canonical order* is range by range, line by line; the write-ahead names items by their index in it.
A replay reads the same bytes (checked against the inode, length, digest and count), so it yields
the same records in the same order however the inputs grew, or new files appeared, meanwhile. A
range that cannot be read again (file replaced, truncated or rewritten) is reported; its items are
placeholders (None) and are not sent.

A state written before the inputs' file was called ``file`` names it ``source`` (in a range and in a stored
record); both are still read.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path

from toolchain.monitor.inputs import STDIN, BadLine, NewsItem, parse_line


def describe(records: list) -> tuple[list, list[dict], dict[str, dict]]:
    """The records in canonical order, their ranges and the positions after them."""
    order = list(dict.fromkeys(r.file for r in records))
    ordered = sorted(records, key=lambda r: (order.index(r.file), r.line))
    ranges, end = [], {}
    for file in order:
        mine = [r for r in ordered if r.file == file]
        if file == STDIN:
            ranges.append({"file": STDIN, "stored": [stored(r) for r in mine]})
            end[STDIN] = {"offset": None, "line": mine[-1].line, "inode": None}
            continue
        first, last = mine[0], mine[-1]
        inode, data = read_bytes(Path(file), first.start, last.end)
        ranges.append({"file": file, "inode": inode, "start": first.start, "end": last.end,
                       "line": first.line - 1, "records": len(mine),
                       "sha256": hashlib.sha256(data).hexdigest()})
        end[file] = {"offset": last.end, "line": last.line, "inode": inode}
    return ordered, ranges, end


def replay(ranges: list[dict], report) -> list:
    """The records of a pending batch, in canonical order; None for each one that cannot be read again."""
    records: list = []
    for spec in ranges:
        if range_file(spec) == STDIN:
            records += [restored(r) for r in spec["stored"]]
            continue
        try:
            records += replay_file(spec)
        except ReplayError as exc:
            lost = spec["records"] or 0
            report(f"{range_file(spec)}: the pending batch's lines after line {spec['line']} cannot be read again "
                   f"({exc}); its {lost} lines there are not sent (the file was not append-only)")
            records += [None] * lost
    return records


class ReplayError(Exception):
    pass


def range_file(spec: dict) -> str:
    """The file of a range (``source``: its key in a state written before the rename)."""
    return spec["file"] if "file" in spec else spec["source"]


def replay_file(spec: dict) -> list:
    path, start, end = Path(range_file(spec)), spec["start"], spec["end"]
    try:
        inode, data = read_bytes(path, start, end)
    except OSError as exc:
        raise ReplayError(exc.strerror or str(exc)) from None
    if spec.get("inode") not in (None, inode):
        raise ReplayError("the file was replaced (new inode)")
    if len(data) < end - start:
        raise ReplayError(f"the file is shorter than byte {end}")
    if spec.get("sha256") not in (None, hashlib.sha256(data).hexdigest()):
        raise ReplayError("its bytes changed")
    records, line, offset = [], spec["line"], start
    for raw in lines_of(data):
        line, offset = line + 1, offset + len(raw)
        record = parse_line(raw, str(path), line, offset)
        if record is not None:
            records.append(record)
    if spec.get("records") not in (None, len(records)):
        raise ReplayError(f"{len(records)} lines there now, {spec['records']} when the batch was read")
    return records


def lines_of(data: bytes):
    """The lines of ``data`` split as readline() does (on b"\\n" only), each with its newline."""
    at = 0
    while at < len(data):
        newline = data.find(b"\n", at)
        stop = len(data) if newline < 0 else newline + 1
        yield data[at:stop]
        at = stop


def read_bytes(path: Path, start: int, end: int) -> tuple[int, bytes]:
    with open(path, "rb") as handle:
        handle.seek(start)
        return os.fstat(handle.fileno()).st_ino, handle.read(end - start)


def stored(record) -> dict:
    return {"kind": "bad" if isinstance(record, BadLine) else "item", **asdict(record)}


def restored(data: dict):
    data = dict(data)
    if "source" in data and "file" not in data:   # stored before the rename: ``source`` was the file
        data["file"] = data.pop("source")
    return (BadLine if data.pop("kind") == "bad" else NewsItem)(**data)
