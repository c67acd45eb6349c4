"""The life of an artifact dir: made ready for a stage to write, replaced only when the toolchain wrote it and the
user asked, and judged up to date or stale (config hash, data files' sha256) by ``toolchain build`` and
``train --seeds``.

One rule for every stage: nothing a user made is deleted. A run or export dir is replaced only when its
``toolchain.yaml`` (or an INCOMPLETE marker, or checkpoints) says the toolchain wrote it, and never when it is the
current folder or one above it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from toolchain.core.artifacts import INCOMPLETE, MANIFEST, load_export, load_run, sha256_file
from toolchain.core.errors import ArtifactError


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
