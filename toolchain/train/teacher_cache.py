"""A teacher's logits, computed once per (teacher, text) and kept on disk by content hash.

Distillation reads a teacher's logits on the training split and on the unlabeled texts. A 110M teacher's pass
over tens of thousands of texts takes minutes on a CPU, and every seed and every student of that teacher would
repeat it. The cache keeps each text's logits under two content hashes:

- the **teacher's fingerprint**: the sha256 of its model files (weights, adapter, tokenizer, config), its label
  order, its max length, its task and the pass's precision (bf16 autocast where the CPU has native bf16; a bf16
  pass reads fp32 entries too, the more exact, but an fp32 pass never reads bf16 ones). A teacher trained again (new weights) or read with another max length
  is another teacher, and none of the old entries is read for it;
- the **text's sha256**: a changed text is a new entry; the unchanged texts are read from disk.

Layout: ``CACHE/<fingerprint>/`` holds ``teacher.json`` (what the fingerprint was made of) and shards
``logits-<hash>.npz`` (``keys``: text hashes, ``logits``: one row each). A pass writes one shard with the
texts it computed, atomically (a temporary file renamed into place), so a killed pass leaves whole shards
only. The default location is ``$TOOLCHAIN_CACHE/teacher-logits`` (``~/.cache/toolchain`` when unset);
``distill.cache`` names another or turns it off.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from toolchain.core.artifacts import RunInfo, sha256_file

OFF = ("off", "none", "false", "")


def default_cache_dir() -> Path:
    root = os.environ.get("TOOLCHAIN_CACHE") or str(Path.home() / ".cache" / "toolchain")
    return Path(root) / "teacher-logits"


def cache_dir(setting: str | None) -> Path | None:
    """``distill.cache``: ``auto`` = the default location, ``off`` = no cache, else a directory."""
    if setting is None or str(setting).strip().lower() in OFF:
        return None
    return default_cache_dir() if setting == "auto" else Path(os.path.expanduser(setting))


def teacher_fingerprint(run: RunInfo, precision: str = "fp32") -> tuple[str, dict]:
    """(fingerprint, what it was made of): every file of the run's model dir by content, labels, max length, and
    the precision of the pass where it is not fp32 (bf16 logits are kept apart from fp32 ones)."""
    files = {str(p.relative_to(run.model_dir)): sha256_file(p)   # hashed each pass: about 1 s for 440 MB
             for p in sorted(run.model_dir.rglob("*")) if p.is_file()}
    made_of = {"run": str(run.path.resolve()), "task": run.task, "labels": list(run.labels),
               "max_length": run.max_length, "base_model": run.base_model if run.is_peft else None, "files": files}
    if precision != "fp32":
        made_of["precision"] = precision
    return fingerprint_of(made_of), made_of


def fingerprint_of(made_of: dict) -> str:
    digest = hashlib.sha256(json.dumps({k: v for k, v in made_of.items() if k != "run"}, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class CacheStats:
    """One teacher pass: texts asked, found in the cache, computed, and the seconds spent computing."""
    teacher: str
    texts: int = 0
    hits: int = 0
    computed: int = 0
    seconds: float = 0.0
    fingerprint: str = ""

    def as_dict(self) -> dict:
        return {"teacher": self.teacher, "fingerprint": self.fingerprint, "texts": self.texts, "hits": self.hits,
                "computed": self.computed, "seconds": round(self.seconds, 2)}


class TeacherCache:
    """Per-teacher, per-text logits on disk (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def load(self, fingerprint: str) -> dict[str, np.ndarray]:
        entries: dict[str, np.ndarray] = {}
        folder = self.root / fingerprint
        for shard in sorted(folder.glob("logits-*.npz")) if folder.is_dir() else []:
            try:
                with np.load(shard, allow_pickle=False) as data:
                    entries.update(zip(data["keys"].tolist(), data["logits"]))
            except (OSError, ValueError, KeyError) as exc:   # an unreadable shard is recomputed, never trusted
                print(f"distill: teacher cache shard {shard} unreadable ({exc}); its texts are computed again",
                      flush=True)
        return entries

    def store(self, fingerprint: str, made_of: dict, keys: list[str], logits: np.ndarray) -> None:
        folder = self.root / fingerprint
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "teacher.json"
        if not meta.is_file():
            atomic_write(meta, lambda handle: handle.write(json.dumps(made_of, indent=1).encode()))
        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:16]
        atomic_write(folder / f"logits-{name}.npz",
                     lambda handle: np.savez(handle, keys=np.asarray(keys), logits=np.asarray(logits)))


def atomic_write(path: Path, write: Callable) -> None:
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            write(handle)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def cached_logits(run: RunInfo, texts: list[str], compute: Callable[[list[int]], np.ndarray],
                  cache: TeacherCache | None, precision: str = "fp32") -> tuple[np.ndarray, CacheStats]:
    """The teacher's logits on ``texts`` (in the run's own label order): read from the cache where present,
    ``compute(indices)`` for each distinct missing text otherwise (then stored)."""
    stats = CacheStats(teacher=str(run.path), texts=len(texts))
    keys = [text_key(t) for t in texts]
    fingerprint, made_of = teacher_fingerprint(run, precision) if cache else ("", {})
    stats.fingerprint = fingerprint
    known = cache.load(fingerprint) if cache else {}
    if cache and precision != "fp32":   # an fp32 entry serves a bf16 pass too: it is the more exact
        known.update(cache.load(fingerprint_of({k: v for k, v in made_of.items() if k != "precision"})))
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key not in known:
            first.setdefault(key, i)
    start = time.perf_counter()
    missing = list(first.values())
    if missing:
        computed = np.asarray(compute(missing))
        known.update(zip((keys[i] for i in missing), computed))
        if cache:
            cache.store(fingerprint, made_of, [keys[i] for i in missing], computed)
    stats.seconds = time.perf_counter() - start
    stats.computed = len(missing)
    stats.hits = sum(1 for key in keys if key not in first)
    return np.stack([known[key] for key in keys]) if keys else np.zeros((0, len(run.labels))), stats
