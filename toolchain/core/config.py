"""Typed configuration: one dataclass field per option, with its default, help and validation.

YAML files are serialized configs; ``key=value`` overrides use dotted paths
(``method.name=lora``, ``train.epochs=3``). A bad key or value fails at load time
with a message naming the key and, for typos, the closest valid key.

A renamed key keeps working for one release: a config class lists its former names in ``RENAMED_KEYS``
(``{"gate": "accuracy_gate"}``: a section or a dotted key); each file and each override is read with them
(:func:`current_keys`, :func:`apply_overrides`), with a one-line warning on stderr naming the new key, and
:func:`config_hash` hashes a config under the former names, so a rename does not make existing runs and
exports out of date.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

from toolchain.core.errors import ConfigError  # noqa: F401  (defined in core.errors; exported here too)
from toolchain.core.options import (  # noqa: F401  (the config machinery, exported here for the configs' users)
    _is_dataclass_type, apply_overrides, config_hash, current_key, current_keys, deep_merge, deprecated_key, from_dict,
    opt, read_yaml, to_dict)

CONFIG_VERSION = 1
PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"   # toolchain/configs
TASKS = ("sequence-classification", "token-classification")
METHODS = ("full", "head", "top-k", "lora", "adalora", "ia3")
# The dev metrics each task reports to the Trainer (its ``summary``); the first is what train.metric=auto picks.
TASK_METRICS = {
    "sequence-classification": ("macro_f1", "accuracy"),
    "token-classification": ("f1", "precision", "recall"),  # seqeval entity-level micro scores (strict IOB2)
}


@dataclass
class DataConfig:
    train: str | None = opt(None, "training file (jsonl, csv, PhraseBank txt or CoNLL); ${data} = data root")
    dev: str | None = opt(None, "dev file; if absent, split off the train file (stratified, seeded)")
    test: str | None = opt(None, "test file; if absent, split off the train file (stratified, seeded)")
    format: str = opt("auto", "file format", choices=("auto", "jsonl", "csv", "phrasebank", "conll"))
    text_column: str = opt("text", "column/key holding the text (jsonl/csv)")
    label_column: str = opt("label", "column/key holding the label (jsonl/csv)")
    tag_column: int = opt(-1, "CoNLL column index holding the tag (token classification)")
    tag_scheme: str = opt("auto", "CoNLL tag scheme; IO is converted to IOB2", choices=("auto", "iob2", "io"))
    subtoken_labels: str = opt("first", "token classification: tag only the first sub-token of a word, the rest "
                               "ignored by the loss ('first'), or every sub-token while training ('all')",
                               choices=("first", "all"))
    dev_fraction: float = opt(0.1, "fraction split off for dev when no dev file is given", min=0.0, max=0.5)
    test_fraction: float = opt(0.1, "fraction split off for test when no test file is given", min=0.0, max=0.5)
    split_seed: int = opt(13, "seed of the stratified split")
    max_length: int = opt(128, "maximum sequence length in tokens (longer inputs are truncated)", min=8, max=4096)
    max_train_samples: int = opt(0, "use only the first N training examples (0 = all); for smoke runs", min=0)


@dataclass
class ModelConfig:
    base: str = opt("packaged:all-MiniLM-L6-v2", "base model: 'packaged:all-MiniLM-L6-v2', an HF model dir or hub id")
    task: str = opt("sequence-classification", "task", choices=TASKS)
    classifier_dropout: float | None = opt(None, "dropout before the classification head (None = model default)", min=0.0, max=0.9)


@dataclass
class MethodConfig:
    name: str = opt("full", "adaptation method", choices=METHODS)
    top_k: int = opt(2, "top-k: number of top encoder layers left trainable", min=0)
    lora_r: int = opt(16, "LoRA/AdaLoRA rank (AdaLoRA: target average rank)", min=1)
    lora_alpha: int = opt(32, "LoRA scaling alpha", min=1)
    lora_dropout: float = opt(0.1, "LoRA dropout", min=0.0, max=0.9)
    target_modules: str = opt("all-linear", "modules adapted by LoRA/AdaLoRA/IA3: 'all-linear' (IA3: each block's "
                                            "keys, values and feed-forward output, found by structure) or comma list")
    adalora_init_r: int = opt(24, "AdaLoRA initial rank per matrix", min=1)
    adalora_tinit: float = opt(0.1, "AdaLoRA warm-up before pruning ranks (fraction of total steps)", min=0.0, max=1.0)
    adalora_tfinal: float = opt(0.2, "AdaLoRA final fine-tuning without rank changes (fraction of steps)", min=0.0, max=1.0)
    adalora_delta_t: int = opt(10, "AdaLoRA steps between budget reallocations", min=1)
    ia3_feedforward: str = opt("output.dense", "IA3 feed-forward module name suffix, for a comma list of "
                                               "target_modules")


@dataclass
class AdversarialConfig:
    kind: str = opt("none", "adversarial perturbation of word embeddings", choices=("none", "fgm", "pgd"))
    epsilon: float = opt(1.0, "perturbation norm bound", min=0.0)
    alpha: float = opt(0.3, "PGD step size", min=0.0)
    steps: int = opt(3, "PGD steps", min=1, max=20)


@dataclass
class TrainConfig:
    epochs: float = opt(5.0, "training epochs", min=0.0)
    max_steps: int = opt(-1, "stop after this many optimizer steps (-1 = use epochs)")
    batch_size: int = opt(16, "per-device training batch size", min=1)
    eval_batch_size: int = opt(64, "per-device evaluation batch size", min=1)
    gradient_accumulation: int = opt(1, "gradient accumulation steps", min=1)
    learning_rate: float = opt(5e-5, "peak learning rate (AdamW)", min=0.0)
    weight_decay: float = opt(0.01, "AdamW weight decay (not on biases/LayerNorm)", min=0.0)
    scheduler: str = opt("linear", "learning-rate schedule", choices=("linear", "cosine", "constant_with_warmup"))
    warmup_ratio: float = opt(0.1, "fraction of steps for linear warmup", min=0.0, max=1.0)
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 = off)", min=0.0)
    optimizer: str = opt("adamw_torch_fused", "AdamW implementation: adamw_torch_fused (one fused kernel per step, "
                         "the default) or adamw_torch (a per-tensor loop; about 0.87x the training throughput of "
                         "`full` on CPU)", choices=("adamw_torch", "adamw_torch_fused"))
    precision: str = opt("auto", "auto: bf16/fp16 on CUDA; on CPU bf16 autocast where it has native bf16 (AMX-BF16, "
                         "AVX512-BF16), fp32 elsewhere", choices=("auto", "fp32", "bf16", "fp16"))
    seed: int = opt(42, "random seed (data order, init, dropout)")
    eval_steps: int = opt(50, "evaluate on dev and write a checkpoint every N optimizer steps", min=1)
    save_total_limit: int = opt(2, "checkpoints kept", min=1)
    logging_steps: int = opt(10, "log loss every N steps", min=1)
    metric: str = opt("auto", "dev metric for early stopping / best model: auto = the task's (macro_f1 for "
                      "sequence classification, f1 = seqeval micro entity F1 for token classification), or one of "
                      "accuracy, macro_f1 (sequence) / f1, precision, recall (token)")
    early_stopping_patience: int = opt(2, "evaluations without improvement before stopping (0 = off)", min=0)
    num_workers: int = opt(0, "dataloader workers", min=0)
    group_by_length: bool = opt(False, "batch training examples of similar length together (less padding)")
    class_weights: str = opt("none", "loss weight per class, from the training data's class counts: none; balanced "
                             "(inverse frequency, scaled to a mean of 1 over the examples); sqrt (its square root: a "
                             "milder push towards rare classes). With a topic head each head is weighted on its own",
                             choices=("none", "balanced", "sqrt"))


@dataclass
class TopicHeadConfig:
    train: str | None = opt(None, "topic-labelled training file: adds a topic head trained jointly with the main "
                            "head on one encoder (one model call gives both); unset = single-task")
    dev: str | None = opt(None, "topic dev file; if absent, split off the topic train file (stratified, seeded)")
    test: str | None = opt(None, "topic test file; if absent, split off the topic train file (stratified, seeded)")
    format: str = opt("auto", "topic file format", choices=("auto", "jsonl", "csv"))
    text_column: str = opt("text", "column/key holding the text (jsonl/csv)")
    label_column: str = opt("label", "column/key holding the topic name (jsonl/csv)")
    main_repeat: int = opt(1, "each epoch repeats the main data set's training examples this many times (balances a "
                           "small main set against a large topic set)", min=1, max=100)
    loss_weight: float = opt(1.0, "weight of the topic head's loss relative to the main head's", min=0.0)


@dataclass
class AugmentConfig:
    method: str = opt("none", "augmented copies of the training examples: eda (swap / delete / insert words), mlm "
                      "(masked-LM word replacement with augment.mlm_model), eda+mlm (half each); see "
                      "toolchain/data/augment.py", choices=("none", "eda", "mlm", "eda+mlm"))
    copies: int = opt(1, "augmented copies per training example", min=0, max=20)
    p: float = opt(0.1, "fraction of a sentence's words changed (swapped, deleted, inserted or replaced)",
                   min=0.0, max=0.9)
    mlm_model: str | None = opt(None, "model with a masked-LM head for augment.method=mlm (a `toolchain pretrain` "
                                "output or a Hugging Face masked-LM dir)")
    top_k: int = opt(5, "mlm: each replacement is drawn from the LM's top-k word pieces", min=1, max=100)
    seed: int | None = opt(None, "seed of the augmentation (default: train.seed)")


@dataclass
class UpdateConfig:
    parent: str | None = opt(None, "run dir whose model this run continues on new data (set by `toolchain update`); "
                             "the run is scored on the parent's test set too and records the parent in its lineage")
    replay: float = opt(0.0, "parent training examples mixed into each epoch, as a fraction of the new training set's "
                        "size (seeded sample; at most the parent's whole training set; 0 = none)", min=0.0, max=100.0)
    l2sp: float = opt(0.0, "weight of the penalty towards the parent's weights: l2sp/2 * sum of squared differences "
                      "over the trainable weights (L2-SP; 0 = off)", min=0.0)
    parent_dev: bool = opt(True, "pick the best checkpoint on the new dev set plus the parent's dev set (false: the "
                           "new dev set only)")
    max_forgetting: float = opt(0.5, "most points the parent's test metric (accuracy; entity F1 for NER) may drop "
                                "before the run is marked not promotable", min=0.0)


@dataclass
class DistillConfig:
    ADDED_KEYS = {"topic_teacher": None, "cross_task": True}
    UNHASHED_KEYS = ("cache",)   # where teacher logits are kept changes no model
    teacher: str | None = opt(None, "run dir(s) whose class probabilities the run learns from: one run dir, a comma "
                              "list of run dirs or a seed group (train --seeds) = an ensemble teacher (the mean of "
                              "its members' probabilities); any method or base model with the run's labels; unset = "
                              "no distillation")
    alpha: float = opt(0.5, "weight of the soft loss, KL(teacher || student) at distill.temperature times T^2, against "
                       "the hard-label cross-entropy (weight 1 - alpha) on the labelled examples", min=0.0, max=1.0)
    temperature: float = opt(2.0, "softmax temperature of teacher and student in the soft loss", min=0.1, max=100.0)
    unlabeled: str | None = opt(None, "file of unlabeled in-domain texts (jsonl with a 'text' key, or one text a line) "
                                "trained with the soft loss only (benchmarks/unlabeled_text.py writes one); ${data} = "
                                "data root")
    max_unlabeled: int = opt(0, "use only the first N unlabeled texts (0 = all)", min=0)
    topic_teacher: str | None = opt(None, "with a topic head (topic.train): the topic head's teacher, run dir(s) "
                                    "trained for the topic labels (a comma list or seed group = an ensemble); "
                                    "distill.teacher then teaches the main head")
    cross_task: bool = opt(True, "with a topic head: each example also learns the other head's teacher's "
                           "probabilities (the sentiment teacher on the tweets, the topic teacher on the sentences); "
                           "false = only its own task's teacher")
    cache: str = opt("auto", "where teacher logits are kept by content hash (teacher files + text), reused by every "
                     "seed and student: auto = $TOOLCHAIN_CACHE/teacher-logits (~/.cache/toolchain), a directory, "
                     "or off")


@dataclass
class RunConfig:
    version: int = opt(CONFIG_VERSION, "config schema version")
    output_dir: str = opt("runs/sentiment", "run directory written by train")
    data: DataConfig = opt(None, "data", factory=DataConfig)
    model: ModelConfig = opt(None, "model", factory=ModelConfig)
    method: MethodConfig = opt(None, "method", factory=MethodConfig)
    adversarial: AdversarialConfig = opt(None, "adversarial training", factory=AdversarialConfig)
    train: TrainConfig = opt(None, "optimisation", factory=TrainConfig)
    topic: TopicHeadConfig = opt(None, "a topic head trained jointly with the main head", factory=TopicHeadConfig)
    update: UpdateConfig = opt(None, "continuing a parent run's model on new data", factory=UpdateConfig)
    augment: AugmentConfig = opt(None, "offline augmentation of the training split", factory=AugmentConfig)
    distill: DistillConfig = opt(None, "distillation from a teacher run or ensemble", factory=DistillConfig)

    def __post_init__(self) -> None:
        if self.topic.train and self.model.task != "sequence-classification":
            raise ConfigError(f"topic.train: a topic head needs model.task=sequence-classification, not "
                              f"{self.model.task!r}")
        if not self.update.parent:
            for key in ("replay", "l2sp"):
                if getattr(self.update, key):
                    raise ConfigError(f"update.{key}: needs update.parent (the run whose model is continued); use "
                                      f"`toolchain update PARENT_RUN_DIR --data NEW_FILE`")
        if "mlm" in self.augment.method and not self.augment.mlm_model:
            raise ConfigError(f"augment.method={self.augment.method}: needs augment.mlm_model (a model with a masked-LM "
                              f"head, e.g. a `toolchain pretrain` output)")
        if self.augment.method != "none" and self.model.task != "sequence-classification":
            raise ConfigError(f"augment.method: augmentation is for sequence classification, not {self.model.task!r}")
        if self.distill.teacher or self.distill.unlabeled or self.distill.topic_teacher:
            self._check_distill()
        if self.update.parent and self.topic.train:
            raise ConfigError("update.parent: continuing a model with a topic head is not supported; update the "
                              "single-task model, or train the joint model again with topic.train")
        if self.train.class_weights != "none" and self.model.task != "sequence-classification":
            raise ConfigError(f"train.class_weights: weights per class are for sequence classification, not "
                              f"{self.model.task!r}")
        valid = TASK_METRICS.get(self.model.task, ())
        if self.train.metric != "auto" and self.train.metric not in valid:
            raise ConfigError(f"train.metric: {self.train.metric!r} is not a metric of {self.model.task}; "
                              f"valid: {', '.join(('auto',) + valid)}")

    def _check_distill(self) -> None:
        d = self.distill
        if d.topic_teacher and not self.topic.train:
            raise ConfigError("distill.topic_teacher: teaches a topic head; set topic.train (a joint model), or use "
                              "distill.teacher for a single-task topic model")
        if not (d.teacher or d.topic_teacher):
            raise ConfigError("distill.unlabeled: needs distill.teacher (unlabeled texts are trained on the teacher's "
                              "probabilities only)")
        if self.model.task not in ("sequence-classification", "token-classification"):
            raise ConfigError(f"distill.teacher: distillation is for sequence or token classification, not "
                              f"{self.model.task!r}")
        if d.unlabeled and self.model.task != "sequence-classification":
            raise ConfigError("distill.unlabeled: unlabeled texts are for sequence classification; a token-"
                              "classification student is distilled on its labelled sentences")
        if self.topic.train and not d.topic_teacher:
            raise ConfigError("distill.teacher: a model with a topic head needs distill.topic_teacher too (the topic "
                              "head's teacher, e.g. a `topic-mpnet` run); distill.teacher teaches the main head")


def train_metric(cfg: RunConfig) -> str:
    """The dev metric that picks the best checkpoint and drives early stopping (train.metric, auto resolved)."""
    return TASK_METRICS[cfg.model.task][0] if cfg.train.metric == "auto" else cfg.train.metric


# --------------------------------------------------------------------------- building


def resolve_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    available = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} is neither a YAML file nor a preset; presets: {', '.join(available)}")


def read_preset(name_or_path: str, seen: tuple = (), renamed: dict[str, str] | None = None) -> dict:
    """A preset's mapping, with ``extends: OTHER`` resolved (the other preset's values, overridden); each file's
    keys under former names (``renamed``) read as the current ones."""
    path = resolve_preset(name_or_path)
    raw = current_keys(read_yaml(path), renamed or {}, str(path))
    parent = raw.pop("extends", None)
    if parent:
        if parent in seen:
            raise ConfigError(f"{path}: 'extends: {parent}' forms a cycle")
        raw = deep_merge(read_preset(parent, seen + (parent,), renamed), raw)
    return raw


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None,
                cls: type = RunConfig) -> Any:
    renamed = getattr(cls, "RENAMED_KEYS", {})
    raw = read_preset(name_or_path, renamed=renamed) if name_or_path else {}
    return from_dict(cls, apply_overrides(raw, list(overrides or []), renamed))


def data_root() -> Path | None:
    """Folder holding the shared data sets: $TOOLCHAIN_DATA_DIR, else ../shared/data near cwd or the package."""
    env = os.environ.get("TOOLCHAIN_DATA_DIR")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):   # the cwd, the checkout holding toolchain/
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def expand_data_path(value: str | None) -> str | None:
    """Expand ``${data}`` in a data path, with a clear error when the data root is unknown."""
    if not value or "${data}" not in value:
        return value
    root = data_root()
    if root is None:
        raise ConfigError(
            f"data path {value!r} uses ${{data}} but no data folder was found: set TOOLCHAIN_DATA_DIR to the "
            "folder holding financial_phrasebank/ (e.g. ../shared/data), or pass data.train=PATH data.dev=PATH data.test=PATH")
    return value.replace("${data}", str(root))


def field_help(cls: type = RunConfig, prefix: str = "", values: Any = None) -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every option: the CLI prints these for `toolchain config`.
    With ``values`` (a config of class ``cls``) its values replace the defaults."""
    rows, hints = [], get_type_hints(cls)
    values = cls() if values is None else values
    for f in fields(cls):
        if _is_dataclass_type(hints[f.name]):
            rows += field_help(hints[f.name], prefix + f.name + ".", getattr(values, f.name))
        else:
            rows.append((prefix + f.name, getattr(values, f.name), f.metadata.get("help", "")))
    return rows
