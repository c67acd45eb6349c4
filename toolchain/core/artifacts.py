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


def prepare_run_dir(cfg, resume: bool, overwrite: bool) -> Path:
    """The run dir of ``cfg.output_dir``, ready to write: checked for --resume, or emptied when the user asked
    (--overwrite) and it is a run dir the toolchain wrote; only rank 0 decides under torchrun."""
    from toolchain.core.hardware import is_main

    run_dir = Path(cfg.output_dir)
    if resume:
        if not any((run_dir / "checkpoints").glob("checkpoint-*")):
            raise ArtifactError(f"{run_dir}: nothing to resume (it stopped before its first checkpoint); start it "
                                f"again with --overwrite")
        return run_dir
    if not is_main():
        # Only rank 0 decides: it creates the run dir, so the other ranks would race its first write.
        # When rank 0 refuses, torchrun stops the whole group.
        return run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise ArtifactError(f"{run_dir}: output_dir names a file, not a folder; pass output_dir=NEW_DIR")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ArtifactError(f"{run_dir} already exists; pass --overwrite to replace it, --resume to continue it, "
                                f"or output_dir=NEW_DIR")
        check_replaceable(run_dir)
        shutil.rmtree(run_dir)
    return run_dir


TRAINING_STAGES = ("train", "pretrain")   # what `train --overwrite` may replace
EXPORT_STAGES = ("export",)               # what `export` may replace


def run_dir_marker(path: Path, stages: tuple[str, ...] = TRAINING_STAGES) -> str | None:
    """What makes ``path`` recognizable as a dir the toolchain wrote for one of ``stages``, or None.

    Its ``toolchain.yaml`` decides when it has one. A training run killed before writing it is still known by
    its ``INCOMPLETE`` marker or its checkpoints; an export dir always has its manifest (it is renamed into place
    only once written), so an export dir is known by its manifest alone."""
    if (path / MANIFEST).is_file():
        stage = stage_of(path / MANIFEST)
        return f"{MANIFEST} of stage {stage!r}" if stage in stages else None
    if not set(stages) & set(TRAINING_STAGES):
        return None
    if (path / INCOMPLETE).is_file():
        return f"{INCOMPLETE} marker"
    if any((path / "checkpoints").glob("checkpoint-*")):
        return "checkpoints/checkpoint-*"
    return None


def check_replaceable(path: Path, stages: tuple[str, ...] = TRAINING_STAGES, action: str = "--overwrite",
                      instead: str = "output_dir=NEW_DIR (e.g. runs/NAME)") -> None:
    """The one rule for deleting an existing dir: only a dir the toolchain wrote for one of ``stages`` (a training
    run for ``train --overwrite``, an export dir for ``export``) may go, and never the current folder or one
    above it. ``action`` and ``instead`` name, in the error, what would delete it and what to pass instead."""
    training = bool(set(stages) & set(TRAINING_STAGES))
    what = "a run dir" if training else "an export dir"
    if run_dir_marker(path, stages) is None:
        manifest_path = path / MANIFEST
        markers = f"no {MANIFEST}, no {INCOMPLETE} marker and no checkpoints/" if training else f"no {MANIFEST}"
        why = (f"its {MANIFEST} is from stage {stage_of(manifest_path)!r}, not "
               f"{'a training run' if training else 'an export'}"
               if manifest_path.is_file() else f"it has {markers}")
        raise ArtifactError(f"{path}: not {what} ({why}), so {action} will not delete it; pass "
                            f"{instead} or an empty folder, or remove it yourself")
    check_not_cwd(path, action, instead)


def check_not_cwd(path: Path, action: str, instead: str) -> None:
    resolved, cwd = Path(path).resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        where = "the current directory" if resolved == cwd else f"a parent of the current directory ({cwd})"
        raise ArtifactError(f"{path}: {action} would delete {where}; refusing. Pass {instead}")


def check_export_target(final: Path, run_dir: Path | None = None) -> None:
    """Refuse, before an export starts, a target it would have to delete without having written it.

    The export is built beside ``final`` and renamed into place, moving an existing ``final`` aside and deleting
    it (and ``final.failed`` is replaced by a failed build). So ``final`` may be missing, an empty folder, or an
    export dir (its toolchain.yaml says stage: export); never the run dir being exported (``run_dir``) or a folder
    holding it, the current folder or one above it, or a folder a user made. The same for ``final.failed``."""
    final = Path(final).resolve()   # '.' names the current folder (and has no name of its own)
    action, instead = "export", "--output NEW_DIR (e.g. exports/NAME)"
    if run_dir is not None:
        resolved, run = final, Path(run_dir).resolve()
        if resolved == run:
            raise ArtifactError(f"{final}: the export dir would replace the run dir being exported; pass {instead}")
        if resolved in run.parents:
            raise ArtifactError(f"{final}: this folder holds the run dir being exported ({run}), and the export would "
                                f"replace it; pass {instead}")
    for target in (final, final.with_name(final.name + ".failed")):
        if not os.path.lexists(target):
            continue
        if not target.is_dir():
            raise ArtifactError(f"{target}: not a folder, and the export would replace it; pass {instead}")
        check_not_cwd(target, action, instead)
        if any(target.iterdir()):
            check_replaceable(target, EXPORT_STAGES, action, instead)


def stage_of(manifest_path: Path):
    """The ``stage`` a toolchain.yaml names ('unreadable' when it is no YAML mapping)."""
    try:
        return (yaml.safe_load(manifest_path.read_text(encoding="utf-8")) or {}).get("stage")
    except (yaml.YAMLError, AttributeError, UnicodeDecodeError):
        return "unreadable"


def run_state(run_dir: Path, expected_hash: str) -> str:
    """"up to date" (a complete run of this config hash, trained on the data files now on disk), "resume" (an
    interrupted run with checkpoints) or "train"; :func:`run_staleness` also says why."""
    return run_staleness(run_dir, expected_hash)[0]


def run_staleness(run_dir: Path, expected_hash: str) -> tuple[str, str]:
    """(state, why): the state of :func:`run_state` and, unless it is up to date, the reason in words."""
    try:
        run = load_run(run_dir)
    except ArtifactError as exc:
        return ("resume" if (run_dir / "checkpoints").is_dir() else "train"), str(exc)
    if run.manifest.get("config_hash") != expected_hash:
        return "train", (f"{run_dir}: trained with config hash {str(run.manifest.get('config_hash'))[:16]}, "
                         f"not {expected_hash[:16]}")
    changed = changed_data_files(run.manifest)
    if changed:
        return "train", f"{run_dir}: its data changed since it was trained: " + "; ".join(changed)
    return "up to date", ""


def changed_data_files(manifest: dict) -> list[str]:
    """The run's data files (``data_files``: role -> {path, sha256}) whose content on disk is no longer what the
    run was trained on, or that are gone; one line each, naming role and path (empty when all are the same)."""
    roles: dict[str, list[str]] = {}
    recorded: dict[str, str] = {}
    for role, info in (manifest.get("data_files") or {}).items():
        if not isinstance(info, dict) or not info.get("path") or not info.get("sha256"):
            continue   # e.g. "replay": a sample of the parent's data, recorded by its own files
        roles.setdefault(info["path"], []).append(role)
        recorded.setdefault(info["path"], info["sha256"])
    changed = []
    for path, names in roles.items():
        what = f"{'/'.join(names)} file {path}"
        if not Path(path).is_file():
            changed.append(f"{what} is gone")
            continue
        actual = sha256_file(path)
        if actual != recorded[path]:
            changed.append(f"{what} changed (sha256 now {actual[:12]}, trained on {recorded[path][:12]})")
    return changed


def export_state(export_dir: Path, run_hash: str, export_hash: str) -> str:
    try:
        manifest = load_export(export_dir).manifest
    except ArtifactError:
        return "export"
    same = manifest.get("run_config_hash") == run_hash and manifest.get("export_config_hash") == export_hash
    return "up to date" if same else "export"


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
