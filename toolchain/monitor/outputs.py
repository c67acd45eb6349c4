"""The feeder's append-only output files (predictions, bad lines), exactly once under the write-ahead.

The state holds each file's length when the pending batch began. What the batch writes is first
recorded in the state (a request's predictions, once answered) or derived from the batch's lines (its
bad lines); a restart cuts each file back to that length and writes the batch's lines again, so a
crash anywhere leaves every line in the file exactly once. Before a batch is committed the files are
fsynced, so a committed length never points past data a power loss could take away.

What is written is masked: the free-text fields of each file (:data:`FREE_TEXT`: a prediction's
``text``, a bad line's ``reason``, which may quote the line) go through ``redact``
(:func:`toolchain.core.privacy.mask` unless the feeder runs with ``--no-mask``); the ids, sources and line
numbers that match a row to its item are written as they are.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from toolchain.core.privacy import mask

FREE_TEXT = {"predictions": ("text",), "bad_lines": ("reason",)}   # the fields that may hold personal data


class Outputs:
    def __init__(self, paths: dict[str, Path | None], report, redact: Callable[[str], str] = mask):
        self.paths = {name: Path(path).resolve() for name, path in paths.items() if path is not None}
        self.report = report
        self.redact = redact
        self.handles: dict[str, object] = {}

    def sizes(self) -> dict[str, int]:
        """The current length of each output file, by its path."""
        return {str(path): path.stat().st_size if path.exists() else 0 for path in self.paths.values()}

    def rewind(self, sizes: dict[str, int]) -> None:
        """Cut each file back to its length in ``sizes`` (what a pending batch found when it began)."""
        for path in self.paths.values():
            size = sizes.get(str(path))
            if size is None or not path.exists():
                continue
            now = path.stat().st_size
            if now > size:
                self.close()
                os.truncate(path, size)
            elif now < size:
                self.report(f"{path}: shorter ({now} bytes) than when the pending batch began ({size}); "
                            "was it rotated? appending to it as it is")

    def append(self, name: str, rows: list[dict]) -> None:
        if name not in self.paths or not rows:
            return
        handle = self.handles.get(name)
        if handle is None:
            handle = self.handles[name] = open(self.paths[name], "a", encoding="utf-8")
        handle.write("".join(json.dumps(self.redacted(name, row)) + "\n" for row in rows))
        handle.flush()

    def redacted(self, name: str, row: dict) -> dict:
        """The row with its free-text fields redacted."""
        fields = [key for key in FREE_TEXT.get(name, ()) if isinstance(row.get(key), str)]
        return {**row, **{key: self.redact(row[key]) for key in fields}} if fields else row

    def sync(self) -> None:
        for handle in self.handles.values():
            os.fsync(handle.fileno())

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()
