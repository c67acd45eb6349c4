"""`toolchain pretrain`: continued masked-LM pre-training on unlabeled domain text -> a new base model.

The corpus has one document (or sentence) a line. Each document is tokenized and cut into blocks of
``data.max_length`` tokens; the Hugging Face Trainer runs the loop with
``DataCollatorForLanguageModeling`` (or ``DataCollatorForWholeWordMask`` with ``masking.whole_word``).
The output directory follows the run-dir contract (toolchain.yaml, metrics.json, checkpoints/ for
``--resume``); its ``model/`` folder is a base model that ``toolchain train model.base=OUT/model`` accepts.

Presets carry ``kind: pretrain``; :func:`load_preset_config` picks the config class from that key.
This module stays light (no torch): the work happens in :mod:`toolchain.pretrain.trainer`; the CLI
handler is :mod:`toolchain.commands.pretrain`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from toolchain.core.config import CONFIG_VERSION, ConfigError, RunConfig, from_dict, load_config, opt, read_preset

KIND = "pretrain"


@dataclass
class PretrainDataConfig:
    train: str | None = opt(None, "unlabeled text, one document or sentence a line (.jsonl: its 'text' field); "
                            "several files comma-separated; ${data} = data root")
    exclude: str | None = opt(None, "files (comma-separated, .jsonl or text) whose texts are removed from the corpus: "
                              "the test sets of the tasks the model will be measured on")
    dev_fraction: float = opt(0.02, "fraction of documents held out to measure masked-LM loss", min=0.0, max=0.5)
    max_dev_blocks: int = opt(200, "at most this many held-out blocks are evaluated", min=1)
    split_seed: int = opt(13, "seed of the document split")
    max_length: int = opt(128, "block length in tokens (documents are chunked into blocks)", min=16, max=512)
    min_block: int = opt(16, "a document's last block shorter than this many tokens is dropped", min=1)
    max_documents: int = opt(0, "use only the first N lines (0 = all); for smoke runs", min=0)


@dataclass
class MaskingConfig:
    probability: float = opt(0.15, "fraction of tokens selected for prediction", min=0.01, max=0.9)
    whole_word: bool = opt(False, "mask every sub-token of a selected word together (whole-word masking)")


@dataclass
class PretrainTrainConfig:
    max_steps: int = opt(2000, "optimizer steps (-1 = use epochs)")
    epochs: float = opt(1.0, "passes over the blocks when max_steps is -1", min=0.0)
    batch_size: int = opt(16, "per-device batch size (blocks)", min=1)
    eval_batch_size: int = opt(32, "per-device evaluation batch size", min=1)
    gradient_accumulation: int = opt(1, "gradient accumulation steps", min=1)
    learning_rate: float = opt(5e-5, "peak learning rate (AdamW)", min=0.0)
    weight_decay: float = opt(0.01, "AdamW weight decay", min=0.0)
    scheduler: str = opt("linear", "learning-rate schedule", choices=("linear", "cosine", "constant_with_warmup"))
    warmup_ratio: float = opt(0.06, "fraction of steps for linear warmup", min=0.0, max=1.0)
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 = off)", min=0.0)
    precision: str = opt("auto", "auto: bf16/fp16 on CUDA, fp32 on CPU", choices=("auto", "fp32", "bf16", "fp16"))
    seed: int = opt(42, "random seed (block order, masking, init of the MLM head if absent)")
    eval_steps: int = opt(200, "evaluate held-out loss and write a checkpoint every N steps", min=1)
    save_total_limit: int = opt(2, "checkpoints kept", min=1)
    logging_steps: int = opt(20, "log loss every N steps", min=1)
    num_workers: int = opt(0, "dataloader workers", min=0)


@dataclass
class PretrainConfig:
    kind: str = opt(KIND, "config kind: pretrain presets say 'pretrain'", choices=(KIND,))
    version: int = opt(CONFIG_VERSION, "config schema version")
    output_dir: str = opt("runs/pretrain", "output directory; its model/ folder is the new base model")
    base: str = opt("packaged:all-MiniLM-L6-v2", "model to continue from: 'packaged:NAME', an HF model dir or hub id")
    data: PretrainDataConfig = opt(None, "corpus", factory=PretrainDataConfig)
    masking: MaskingConfig = opt(None, "masking", factory=MaskingConfig)
    train: PretrainTrainConfig = opt(None, "optimisation", factory=PretrainTrainConfig)


def load_pretrain_config(name_or_path: str | None, overrides: list[str] | None = None) -> PretrainConfig:
    return load_config(name_or_path, overrides, cls=PretrainConfig)


def load_preset_config(name_or_path: str, overrides: list[str] | None = None):
    """A training or pre-training preset: a PretrainConfig when it says ``kind: pretrain``, a RunConfig
    when it has no ``kind``; other stages' presets (``kind: export`` ...) have their own loaders."""
    kind = read_preset(name_or_path).get("kind")
    if kind not in (None, KIND):
        raise ConfigError(f"{name_or_path}: a preset of kind {kind!r}, neither training nor pre-training")
    return load_config(name_or_path, overrides, cls=PretrainConfig if kind == KIND else RunConfig)


def resume_config(out: str | Path) -> PretrainConfig:
    """The config of an interrupted pre-training, read from its toolchain.yaml."""
    import yaml

    from toolchain.core.artifacts import MANIFEST, ArtifactError

    path = Path(out) / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{out}: no {MANIFEST}; nothing to resume")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if data.get("stage") != "pretrain":
        raise ArtifactError(f"{out}: {MANIFEST} is from stage {data.get('stage')!r}, expected pretrain")
    if data.get("status") == "complete":
        raise ArtifactError(f"{out}: this pre-training run is already complete")
    return replace(from_dict(PretrainConfig, data["config"]), output_dir=str(out))
