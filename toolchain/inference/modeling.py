"""Base-model resolution and loading (safetensors only: no pickle)."""
from __future__ import annotations

from pathlib import Path

from toolchain.core.errors import ModelError  # noqa: F401  (defined in core.errors; exported here too)
from toolchain.inference.packaged import PACKAGED_MODELS, packaged_model_dir  # noqa: F401  (exported here too)

PACKAGED_PREFIX = "packaged:"


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


