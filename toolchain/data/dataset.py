"""Splits, label maps and tokenized datasets, shared by every task."""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from toolchain.core.artifacts import sha256_file
from toolchain.core.config import DataConfig, expand_data_path
from toolchain.data.readers import DataError, Example, read_examples


@dataclass
class Splits:
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    files: dict[str, dict] = field(default_factory=dict)  # role -> {"path", "sha256", "examples"}


def _stratum(example: Example) -> str:
    return example.label if isinstance(example.label, str) else "seq"


def stratified_split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Split off ``fraction`` of each class (seeded); returns (rest, held_out)."""
    by_class: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_class[_stratum(ex)].append(ex)
    rng = random.Random(seed)
    rest, held = [], []
    for key in sorted(by_class):
        group = by_class[key][:]
        rng.shuffle(group)
        n_held = round(len(group) * fraction)
        held += group[:n_held]
        rest += group[n_held:]
    rng.shuffle(rest)
    rng.shuffle(held)
    return rest, held


def read_file(cfg: DataConfig, path: str) -> list[Example]:
    return read_examples(path, cfg.format, cfg.text_column, cfg.label_column,
                         tag_column=cfg.tag_column, tag_scheme=cfg.tag_scheme)


def load_splits(cfg: DataConfig) -> Splits:
    """Read train/dev/test; split dev/test off the train file (stratified, seeded) when not given."""
    train_path = expand_data_path(cfg.train)
    if not train_path:
        raise DataError("no training data: set data.train=PATH (jsonl, csv, PhraseBank txt or CoNLL)")
    files = {"train": {"path": str(Path(train_path).resolve()) if Path(train_path).exists() else train_path}}
    train = read_file(cfg, train_path)
    dev = test = None
    for role in ("dev", "test"):
        path = expand_data_path(getattr(cfg, role))
        if path:
            examples = read_file(cfg, path)
            files[role] = {"path": str(Path(path).resolve())}
            dev, test = (examples, test) if role == "dev" else (dev, examples)
    if test is None:
        train, test = stratified_split(train, cfg.test_fraction, cfg.split_seed)
        files["test"] = {"path": files["train"]["path"], "split": f"stratified {cfg.test_fraction} seed {cfg.split_seed}"}
    if dev is None:
        train, dev = stratified_split(train, cfg.dev_fraction, cfg.split_seed + 1)
        files["dev"] = {"path": files["train"]["path"], "split": f"stratified {cfg.dev_fraction} seed {cfg.split_seed + 1}"}
    if cfg.max_train_samples:
        train = train[: cfg.max_train_samples]
    for role, examples in (("train", train), ("dev", dev), ("test", test)):
        if not examples:
            raise DataError(f"the {role} split is empty ({files[role]['path']}); give a file or a larger fraction")
        files[role]["sha256"] = sha256_file(files[role]["path"])
        files[role]["examples"] = len(examples)
    return Splits(train, dev, test, files)


def label_list(examples: list[Example]) -> list[str]:
    """Sorted label names seen in the training data (tags flattened for token classification)."""
    labels = set()
    for ex in examples:
        labels.update(ex.label if isinstance(ex.label, list) else [ex.label])
    return sorted(labels)


def check_labels(examples: list[Example], labels: list[str], role: str) -> None:
    """Every label in dev/test/evaluation data must be known from training: else name file, line, value."""
    known = set(labels)
    for ex in examples:
        for value in ex.label if isinstance(ex.label, list) else [ex.label]:
            if value not in known:
                raise DataError(f"{ex.location}: unknown label {value!r} in the {role} data; "
                                f"the model knows {', '.join(labels)}")
