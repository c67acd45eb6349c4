"""The output dir of a predict run: one Parquet file per input shard, written atomically, and its manifest.

::

    OUTPUT/predict.json                          the run: model, inputs (size, mtime), shard size, columns
    OUTPUT/shards/KEY.rows-000000000-000010000.parquet   rows [0, 10000) of the input KEY (stem-digest)
    OUTPUT/bad/KEY.rows-000000000-000010000.jsonl        that shard's bad rows (only where it has some)
    OUTPUT/bad-rows.jsonl                        every bad row, rebuilt from bad/ at the end of each run
    OUTPUT/summary.json                          rows, bad rows, label shares, wall time, rows/s

Exactly once: a shard's bad rows are written first, then its Parquet file, each to a temporary name
and renamed into place (fsynced), so a shard's Parquet file exists only complete, and only after its
bad rows. A shard is finished when its Parquet file exists; a rerun skips it and writes the others. The
shard's name is its input range, and an input may not change between runs (its size and mtime are in
the manifest), so no row is ever in two shards. A kill at any moment leaves whole files and, at worst,
temporary ``.NAME.XXXX`` files that the next run removes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from toolchain.core.artifacts import atomic_write_text, create_temporary, write_json
from toolchain.core.errors import ConfigError
from toolchain.predict.inputs import Shard

MANIFEST = "predict.json"
SHARDS, BAD = "shards", "bad"
BAD_ROWS = "bad-rows.jsonl"
SUMMARY = "summary.json"
VERSION = 1


def shard_path(output: Path, shard: Shard) -> Path:
    return output / SHARDS / f"{shard.name}.parquet"


def bad_path(output: Path, shard: Shard) -> Path:
    return output / BAD / f"{shard.name}.jsonl"


def finished(output: Path, shard: Shard) -> bool:
    return shard_path(output, shard).is_file()


def fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_parquet(table, path: Path) -> None:
    """``table`` to a temporary file next to ``path``, fsynced, then renamed into place."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temporary(path)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def write_shard(output: Path, shard: Shard, table, bad: list[dict]) -> None:
    """The shard's bad rows (if any), then its rows: the Parquet file is the mark that the shard is done."""
    if bad:
        atomic_write_text(bad_path(output, shard), "".join(json.dumps(row) + "\n" for row in bad))
    write_parquet(table, shard_path(output, shard))


def remove_temporaries(output: Path) -> int:
    """Temporary files a killed run left in shards/ and bad/ (``.NAME.XXXXXXXX``); returns how many."""
    removed = 0
    for folder in (output / SHARDS, output / BAD):
        for path in folder.glob(".*") if folder.is_dir() else []:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def prepare(output: Path, identity: dict) -> bool:
    """Create the output dir with its manifest, or check that it holds this very run; True when resuming."""
    manifest = output / MANIFEST
    if manifest.is_file():
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
        differences = [key for key in identity if recorded.get(key) != identity[key]]
        if differences:
            raise ConfigError(f"{output}: holds the predictions of another run (it differs in "
                              f"{', '.join(differences)}: {describe_difference(recorded, identity, differences[0])}); "
                              "give another --output, or remove that dir to start over")
        return True
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"{output}: exists and is not the output of a predict run (no {MANIFEST}); give a new or "
                          "empty --output")
    output.mkdir(parents=True, exist_ok=True)
    write_json(manifest, {**identity})
    return False


def describe_difference(recorded: dict, identity: dict, key: str) -> str:
    before, now = json.dumps(recorded.get(key), default=str), json.dumps(identity[key], default=str)
    return f"was {before[:160]}, now {now[:160]}"


def merge_bad_rows(output: Path, shards: list[Shard]) -> int:
    """``bad-rows.jsonl``: the bad rows of every finished shard, in input order; returns how many."""
    lines = []
    for shard in shards:
        path = bad_path(output, shard)
        if finished(output, shard) and path.is_file():
            lines += path.read_text(encoding="utf-8").splitlines(keepends=True)
    atomic_write_text(output / BAD_ROWS, "".join(lines))
    return len(lines)


def read_columns(output: Path, shards: list[Shard], columns: list[str]):
    """The given columns of each finished shard (a pyarrow table each, in input order)."""
    import pyarrow.parquet as pq

    for shard in shards:
        if finished(output, shard):
            yield pq.read_table(shard_path(output, shard), columns=columns)
