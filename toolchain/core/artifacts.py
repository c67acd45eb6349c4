"""The artifact contract between stages: run dirs, atomic writes, status markers.

A run dir is complete only when its ``toolchain.yaml`` says ``status: complete`` and no
``INCOMPLETE`` marker exists. Files are written to a temporary name and renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from toolchain.core.errors import ArtifactError  # noqa: F401  (defined in core.errors; exported here too)

ARTIFACT_VERSION = 1
MANIFEST = "toolchain.yaml"
INCOMPLETE = "INCOMPLETE"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it into place.

    The temporary file is created with mode 0666 less the umask, as a plain ``open`` would (``mkstemp``
    makes 0600 files, and a renamed 0600 artifact is unreadable to a container under another UID)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temporary(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)  # the rename itself survives a crash only once the folder is synced
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def create_temporary(path: Path) -> tuple[int, str]:
    """An open, new, uniquely named file ``.NAME.XXXXXXXX`` next to ``path`` (mode 0666 & ~umask)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_yaml(path: str | Path, data: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place (replacing an older one)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def mark_incomplete(run_dir: Path, why: str) -> None:
    atomic_write_text(run_dir / INCOMPLETE, why + "\n")


def mark_complete(run_dir: Path) -> None:
    (run_dir / INCOMPLETE).unlink(missing_ok=True)


@dataclass
class RunInfo:
    """What a later stage needs from a run dir's toolchain.yaml."""
    path: Path
    manifest: dict

    @property
    def config(self) -> dict:
        return self.manifest["config"]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def labels(self) -> list[str]:
        return self.manifest["labels"]

    @property
    def base_model(self) -> str:
        return self.manifest["base_model"]

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def is_peft(self) -> bool:
        return self.manifest.get("model_format") == "peft"

    @property
    def max_length(self) -> int:
        return int(self.config["data"]["max_length"])


def read_manifest(path: Path, kind: str) -> dict:
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such {kind} directory")
    if not manifest_path.exists():
        raise ArtifactError(f"{path}: not a {kind} directory (no {MANIFEST})")
    manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8")) or {}
    version = manifest.get("artifact_version")
    if version != ARTIFACT_VERSION:
        raise ArtifactError(f"{path}: artifact_version {version!r} is not supported (expected {ARTIFACT_VERSION})")
    if (path / INCOMPLETE).exists() or manifest.get("status") != "complete":
        why = (path / INCOMPLETE).read_text().strip() if (path / INCOMPLETE).exists() else "status is not complete"
        raise ArtifactError(f"{path}: the {kind} is incomplete ({why}); resume or rerun it")
    return manifest


def load_run(path: str | Path) -> RunInfo:
    path = Path(path)
    manifest = read_manifest(path, "run")
    if manifest.get("stage") != "train":
        raise ArtifactError(f"{path}: {MANIFEST} is from stage {manifest.get('stage')!r}, expected a train run")
    if not (path / "model" / "config.json").exists() and not (path / "model" / "adapter_config.json").exists():
        raise ArtifactError(f"{path}: run dir has no model/ folder")
    return RunInfo(path, manifest)


@dataclass
class ExportInfo:
    """What serving and benchmarks need from an export dir's toolchain.yaml."""
    path: Path
    manifest: dict

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def labels(self) -> list[str]:
        return self.manifest["labels"]

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def serve_variant(self) -> str:
        return self.manifest["serve_variant"]

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    def variant_names(self) -> list[str]:
        return list(self.manifest.get("variants", {}))

    def variant_file(self, name: str | None = None) -> Path:
        name = name or self.serve_variant
        variants = self.manifest.get("variants", {})
        if name not in variants:
            raise ArtifactError(f"{self.path}: no variant {name!r}; variants: {', '.join(variants) or 'none'}")
        entry = variants[name]
        return self.path / entry["dir"] / entry["file"]

    def variant_dir(self, name: str | None = None) -> Path:
        """The variant's Optimum ORTModel directory (load it with ``file_name=variant_file(name).name``)."""
        return self.variant_file(name).parent

    def verify(self, only: list[str] | None = None) -> None:
        """Check model files against the manifest's sha256 (all, or those under the given relative dirs)."""

        for rel, expected in self.manifest.get("files", {}).items():
            if only and not any(rel.startswith(prefix) for prefix in only):
                continue
            file = self.path / rel
            if not file.exists():
                raise ArtifactError(f"{file}: listed in the checksum manifest but missing")
            actual = sha256_file(file)
            if actual != expected:
                raise ArtifactError(f"{file}: sha256 {actual[:16]}... does not match the manifest "
                                    f"({expected[:16]}...); the model file was altered or truncated")


def load_export(path: str | Path) -> ExportInfo:
    path = Path(path)
    manifest = read_manifest(path, "export")
    if manifest.get("stage") != "export":
        raise ArtifactError(f"{path}: {MANIFEST} is from stage {manifest.get('stage')!r}, expected an export dir")
    return ExportInfo(path, manifest)


def sha256_file(path: str | Path) -> str:
    """The file's sha256, read in 1 MiB blocks (data files and model files are recorded by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


GROUP_FILE = "seeds.json"


def is_group(path: str | Path) -> bool:
    """A seed group (``train --seeds N``): a folder with a ``seeds.json`` naming its runs."""
    return (Path(path) / GROUP_FILE).is_file()


def load_group(path: str | Path) -> dict:
    if not is_group(path):
        raise ArtifactError(f"{path}: not a seed group (no {GROUP_FILE}; train one with --seeds N)")
    return json.loads((Path(path) / GROUP_FILE).read_text(encoding="utf-8"))


def group_runs(path: Path) -> list[Path]:
    """The run dirs of a seed group: its ``seeds.json`` runs, found beside it (seed-S) or as recorded."""
    runs = []
    for recorded in load_group(path)["runs"]:
        inside = path / Path(recorded).name
        runs.append(inside if inside.is_dir() else Path(recorded))
    return runs
