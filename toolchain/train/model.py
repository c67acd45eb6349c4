"""The model a run trains: the base weights with a head for the run's labels (reused when the base was fine-tuned
for them), and the adaptation method applied."""
from __future__ import annotations

import json
import re
from pathlib import Path

from toolchain.core.config import RunConfig
from toolchain.inference.modeling import load_pretrained
from toolchain.train.methods import apply_method, head_modules


def build_model(cfg: RunConfig, task, labels: list[str], base_path: str, total_steps: int,
                new_head: bool = False):
    kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
              "label2id": {label: i for i, label in enumerate(labels)}}
    if cfg.model.classifier_dropout is not None:
        kwargs["classifier_dropout"] = cfg.model.classifier_dropout
    model = load_pretrained(task.auto_model_class(), base_path, ignore_mismatched_sizes=True, **kwargs)
    if new_head:
        reset_head(model)
    return apply_method(model, cfg.method, task.peft_task_type, total_steps)


NEW_HEAD = "train data (new head; the base model's head is not reused)"


def reset_head(model) -> None:
    """Re-initialise the task head, the modules outside the base model (a base model's head trained for other
    labels is not reused)."""
    heads = set(head_modules(model))
    for name, module in model.named_children():
        if name in heads:
            module.apply(model._init_weights)


def base_head_labels(base_path: str, task) -> list[str] | None:
    """Label names of a base model fine-tuned for the same task (e.g. a run's model/), else None."""
    config_file = Path(base_path) / "config.json"
    if not config_file.exists():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    suffix = task.auto_model_class().__name__.replace("AutoModel", "")
    if not any(arch.endswith(suffix) for arch in config.get("architectures") or []):
        return None
    id2label = config.get("id2label") or {}
    names = [id2label[key] for key in sorted(id2label, key=int)]
    return None if all(re.fullmatch(r"LABEL_\d+", n) for n in names) else names


def resolve_labels(train_labels: list[str], base_path: str, task) -> tuple[list[str], str]:
    """The label map of the run and where it comes from.

    A base fine-tuned for the same task whose labels cover the training labels keeps its label map
    (order and head weights); with other labels the head is replaced by a new one for the training labels.
    """
    base_labels = base_head_labels(base_path, task)
    if base_labels is None:
        return train_labels, "train data"
    if set(train_labels) <= set(base_labels):
        return base_labels, "base model"
    print(f"base model {base_path} was trained for labels {base_labels}; the training data has "
          f"{train_labels}: a new head is trained for the training labels", flush=True)
    return train_labels, NEW_HEAD
