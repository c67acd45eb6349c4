"""Readers for labelled files: JSONL, CSV, the PhraseBank ``sentence@label`` format and CoNLL columns.

Every reader returns a list of :class:`Example`, each remembering the file and line it came from so
that later errors (unknown label, empty text) can name them.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from toolchain.core.errors import DataError  # noqa: F401  (defined in core.errors; exported here too)

# UTF-8 that drops a leading byte-order mark: spreadsheets write one in "CSV UTF-8" (and some editors in JSONL),
# and read as plain utf-8 it would stick to the first column's name ('\ufefftext') or break the first JSON line.
UTF8 = "utf-8-sig"


@dataclass
class Example:
    text: str | list[str]          # a sentence, or its tokens (token classification)
    label: str | list[str] | None  # a class name, or one tag per token; None when unlabelled
    location: str                  # "file:line" where the record starts


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    head = _open_text(path, "latin-1").read(4096)
    first = next((line for line in head.splitlines() if line.strip()), "")
    if first.startswith("-DOCSTART-") or len(first.split()) >= 2 and "@" not in first:
        return "conll"
    return "phrasebank"


def _open_text(path: Path, encoding: str):
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    try:
        return path.open(encoding=encoding, newline="")
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror})") from None


def _read_lines(path: Path, encoding: str) -> list[str]:
    try:
        with _open_text(path, encoding) as handle:
            return handle.read().splitlines()
    except UnicodeDecodeError as exc:
        name = "utf-8" if encoding == UTF8 else encoding
        raise DataError(f"{path}: not valid {name} text at byte {exc.start}") from None


def _checked_text(value, location: str, column: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{location}: '{column}' must be a string, got {value!r}")
    if not value.strip():
        raise DataError(f"{location}: empty text in '{column}'")
    return value


def _checked_label(value, location: str, column: str, labelled: bool) -> str | None:
    if not labelled:
        return None
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{location}: missing label in '{column}'")
    if isinstance(value, (dict, list, float)):
        raise DataError(f"{location}: label in '{column}' must be a string or integer, got {value!r}")
    return str(value).strip()


def read_jsonl(path: Path, text_column: str, label_column: str, labelled: bool = True) -> list[Example]:
    examples = []
    for number, line in enumerate(_read_lines(path, UTF8), start=1):
        if not line.strip():
            continue
        location = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{location}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{location}: expected a JSON object, got {type(record).__name__}")
        for column in (text_column, label_column) if labelled else (text_column,):
            if column not in record:
                raise DataError(f"{location}: missing key '{column}' (keys: {', '.join(record) or 'none'}); "
                                f"set data.text_column / data.label_column")
        examples.append(Example(_checked_text(record[text_column], location, text_column),
                                _checked_label(record.get(label_column), location, label_column, labelled), location))
    return examples


def read_csv(path: Path, text_column: str, label_column: str, labelled: bool = True) -> list[Example]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with _open_text(path, UTF8) as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            header = reader.fieldnames or []
            for column in (text_column, label_column) if labelled else (text_column,):
                if column not in header:
                    raise DataError(f"{path}:1: missing column '{column}' (columns: {', '.join(header) or 'none'}); "
                                    f"set data.text_column / data.label_column")
            examples = []
            for row in reader:
                location = f"{path}:{reader.line_num}"
                text = _checked_text(row[text_column], location, text_column)
                examples.append(Example(text, _checked_label(row.get(label_column), location, label_column, labelled),
                                        location))
            return examples
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid utf-8 text at byte {exc.start}") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None


def read_phrasebank(path: Path, labelled: bool = True) -> list[Example]:
    """The Financial PhraseBank's latin-1 ``sentence@label`` lines (split on the last '@')."""
    examples = []
    for number, line in enumerate(_read_lines(path, "latin-1"), start=1):
        if not line.strip():
            continue
        location = f"{path}:{number}"
        if "@" not in line:
            raise DataError(f"{location}: expected 'sentence@label', got {line[:60]!r}")
        text, label = line.rsplit("@", 1)
        examples.append(Example(_checked_text(text.strip(), location, "sentence"),
                                _checked_label(label, location, "label", labelled), location))
    return examples


def read_conll(path: Path, tag_column: int = -1, scheme: str = "auto") -> list[Example]:
    """CoNLL columns (``token ... TAG``), ``-DOCSTART-`` lines and blank-line sentence breaks.

    IO-tagged files (only ``I-X``) are converted to IOB2, treating an ``I-`` after ``O`` or after a
    different type as ``B-``. With ``scheme="auto"`` every file is normalised that way (a no-op on valid
    IOB2, and the conversion of IOB1); ``scheme="iob2"`` refuses an entity that starts with ``I-``.
    """
    from toolchain.data.tags import io_to_iob2, validate_iob2

    examples, tokens, tags, start = [], [], [], 0
    lines = _read_lines(path, UTF8) + [""]
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                examples.append(Example(tokens, tags, f"{path}:{start}"))
            tokens, tags = [], []
            continue
        parts = line.split()
        if len(parts) < 2:
            raise DataError(f"{path}:{number}: expected 'token ... TAG' columns, got {line!r}")
        if not -len(parts) <= tag_column < len(parts):
            raise DataError(f"{path}:{number}: no column {tag_column} (data.tag_column) in {line!r}")
        if not tokens:
            start = number
        tokens.append(parts[0])
        tags.append(parts[tag_column])
    for ex in examples:
        if scheme in ("io", "auto"):
            ex.label = io_to_iob2(ex.label)
        validate_iob2(ex.label, ex.location)
    return examples


def read_examples(path: str | Path, fmt: str = "auto", text_column: str = "text", label_column: str = "label",
                  labelled: bool = True, tag_column: int = -1, tag_scheme: str = "auto") -> list[Example]:
    """Read one file in the given (or detected) format; raises DataError naming file and line."""
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "jsonl":
        examples = read_jsonl(path, text_column, label_column, labelled)
    elif fmt == "csv":
        examples = read_csv(path, text_column, label_column, labelled)
    elif fmt == "phrasebank":
        examples = read_phrasebank(path, labelled)
    elif fmt == "conll":
        examples = read_conll(path, tag_column, tag_scheme)
    else:
        raise DataError(f"unknown data format {fmt!r}")
    if not examples:
        raise DataError(f"{path}: holds no examples")
    return examples
