"""Continuing a parent run's model on new labelled data without forgetting what it knew.

``toolchain update PARENT --data NEW`` trains from the parent's model (its head and label map kept when
the new labels are among the parent's) with two levers against forgetting, both in the ``update``
config section:

- **replay**: a seeded sample of the parent's training examples mixed into each epoch
  (``update.replay``, as a fraction of the new training set's size);
- **a penalty towards the parent's weights** (L2-SP): ``update.l2sp / 2 * sum (w - w_parent)^2`` over
  the trainable weights, added to the loss by a small Trainer mixin.

The best checkpoint is picked on the new dev set plus the parent's (``update.parent_dev``). The run is
scored on both test sets, before (the parent itself) and after; the drop on the parent's test set is
the forgetting, and over ``update.max_forgetting`` points the run is recorded as not promotable, with
the figures. The run dir's ``toolchain.yaml`` records the parent and its ancestors (``lineage``).
"""
from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from toolchain.core.artifacts import ArtifactError, RunInfo, load_run
from toolchain.core.config import ConfigError, RunConfig, from_dict
from toolchain.data.dataset import Splits

PARENT_MODEL = "parent-model"   # a PEFT parent merged for continuing, inside the run dir while it trains


def load_parent(cfg: RunConfig) -> RunInfo:
    parent = load_run(cfg.update.parent)
    if parent.task != cfg.model.task:
        raise ConfigError(f"update.parent: {parent.path} is a {parent.task} run; this run is {cfg.model.task}")
    if parent.manifest.get("config", {}).get("topic", {}).get("train"):
        raise ConfigError(f"update.parent: {parent.path} has a topic head; continuing a joint model is not supported")
    return parent


def parent_config(parent: RunInfo) -> RunConfig:
    return from_dict(RunConfig, parent.config)


def parent_splits(parent: RunInfo) -> Splits:
    """The parent's own train/dev/test, read from the files its config names (checked against its sha256)."""
    from toolchain.tasks.joint_data import load_run_splits

    splits = load_run_splits(parent_config(parent))
    recorded = parent.manifest.get("data_files") or {}
    for role, info in splits.files.items():
        expected = (recorded.get(role) or {}).get("sha256")
        if expected and expected != info.get("sha256"):
            raise ArtifactError(f"update.parent: the parent's {role} data {info['path']} changed since it was trained "
                                f"(sha256 {info.get('sha256', '?')[:12]} != recorded {expected[:12]}); its test set "
                                f"can no longer measure forgetting")
    return splits


def replay_sample(parent_train: list, new_size: int, fraction: float, seed: int) -> list:
    """``fraction * new_size`` parent training examples (at most all of them), drawn without replacement."""
    count = min(len(parent_train), round(fraction * new_size))
    return random.Random(seed).sample(parent_train, count) if count > 0 else []


def with_parent_data(cfg: RunConfig, splits: Splits, parent_data: Splits) -> Splits:
    """The run's splits: new train + replayed parent examples; new dev (+ the parent's dev); new test."""
    replayed = replay_sample(parent_data.train, len(splits.train), cfg.update.replay, cfg.train.seed)
    dev = splits.dev + parent_data.dev if cfg.update.parent_dev else splits.dev
    files = dict(splits.files)
    files.update({f"parent.{role}": info for role, info in parent_data.files.items()})
    if replayed:
        files["replay"] = {"examples": len(replayed), "from": "parent.train", "seed": cfg.train.seed}
    return Splits(splits.train + replayed, dev, splits.test, files)


def parent_base(parent: RunInfo, run_dir: Path) -> str:
    """The weights to continue from: the parent's model/ (full), or its adapter merged into its base (PEFT)."""
    if not parent.is_peft:
        return str(parent.model_dir)
    from toolchain.inference.run_model import load_run_model

    model, tokenizer = load_run_model(parent, merge=True)
    target = run_dir / PARENT_MODEL
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return str(target)


def drop_parent_copy(run_dir: Path) -> None:
    shutil.rmtree(run_dir / PARENT_MODEL, ignore_errors=True)


class ParentPenalty:
    """``weight / 2 * sum (w - w_parent)^2`` over the trainable weights, the parent's copy taken at start."""

    def __init__(self, model: torch.nn.Module, weight: float):
        self.weight = weight
        self.anchors = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        terms = [(p.float() - self.anchors[name].to(p.device).float()).pow(2).sum()
                 for name, p in model.named_parameters() if name in self.anchors]
        return 0.5 * self.weight * torch.stack(terms).sum()


class ParentPenaltyMixin:
    """Trainer mixin: the loss plus the penalty towards the parent's weights (composes with the head loss
    and the adversarial trainer, whose extra forward passes add the data loss only)."""

    def __init__(self, *args, parent_penalty: ParentPenalty, **kwargs):
        super().__init__(*args, **kwargs)
        self.parent_penalty = parent_penalty

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._adding_penalty = True
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._adding_penalty = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if not getattr(self, "_adding_penalty", False):
            return result
        self._adding_penalty = False   # once per training step: not again in an adversarial pass
        loss, outputs = result if return_outputs else (result, None)
        penalty = self.parent_penalty(model)
        if getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None:
            penalty = penalty / self.args.gradient_accumulation_steps  # the Trainer will not divide this loss
        loss = loss + penalty
        return (loss, outputs) if return_outputs else loss


def with_penalty(trainer_cls: type) -> type:
    return type(f"ParentPenalty{trainer_cls.__name__}", (ParentPenaltyMixin, trainer_cls), {})


def headline(metrics: dict) -> tuple[str, float]:
    """The metric forgetting is measured on: accuracy (sequence classification), entity F1 (NER)."""
    name = "accuracy" if "accuracy" in metrics else "f1"
    return name, float(metrics[name])


@dataclass
class UpdateScores:
    parent_on_new: dict     # the parent model on the new test set (before training)
    run_on_parent: dict     # this run's model on the parent's test set


def update_report(cfg: RunConfig, parent: RunInfo, scores: UpdateScores, new_test: dict) -> dict:
    """Figures of the update and whether it may be promoted (forgetting within update.max_forgetting)."""
    parent_test = load_parent_metrics(parent)["test"]
    name, before = headline(parent_test)
    _, after = headline(scores.run_on_parent)
    _, new_before = headline(scores.parent_on_new)
    _, new_after = headline(new_test)
    forgetting = round(100 * (before - after), 4)
    report = {
        "metric": name,
        "parent_test": {"parent": before, "run": after, "drop_points": forgetting},
        "new_test": {"parent": new_before, "run": new_after, "gain_points": round(100 * (new_after - new_before), 4)},
        "parent_test_macro_f1": {"parent": parent_test.get("macro_f1"), "run": scores.run_on_parent.get("macro_f1")},
        "new_test_macro_f1": {"parent": scores.parent_on_new.get("macro_f1"), "run": new_test.get("macro_f1")},
        "max_forgetting_points": cfg.update.max_forgetting,
        "promotable": forgetting <= cfg.update.max_forgetting,
    }
    if not report["promotable"]:
        report["why_not_promotable"] = (f"{name} on the parent's test set dropped {forgetting:.2f} points "
                                        f"({before:.4f} -> {after:.4f}), over update.max_forgetting="
                                        f"{cfg.update.max_forgetting:g}")
    return report


def load_parent_metrics(parent: RunInfo) -> dict:
    import json

    path = parent.path / "metrics.json"
    if not path.is_file():
        raise ArtifactError(f"{parent.path}: no metrics.json; the parent's test figures are needed to measure "
                            f"forgetting")
    return json.loads(path.read_text(encoding="utf-8"))


def lineage(parent: RunInfo) -> list[dict]:
    """The parent and its ancestors, nearest first: path, config hash, creation time, test headline."""
    name, value = headline(load_parent_metrics(parent)["test"])
    entry = {"run": str(parent.path), "config_hash": parent.manifest.get("config_hash"),
             "created": parent.manifest.get("created"), "base_model": parent.base_model, "test": {name: value}}
    return [entry, *(parent.manifest.get("lineage") or [])]


# What `toolchain update` uses unless given: replay of 0.3 x the new set's size in parent examples, no penalty.
# Chosen on the PhraseBank -> SEntFiN scenario (benchmarks/update_scenario.py, results/update_scenario.md):
# replay kept the parent's test accuracy and gained about as much on the new test set as naive continued
# fine-tuning; the L2-SP penalty (1.0) also kept it but gave up a third of the gain.
RECOMMENDED = ("update.replay=0.3",)


def update_config(parent_dir: str, data: str, dev: str | None, test: str | None, output_dir: str | None,
                  overrides: list[str]) -> RunConfig:
    """The config of an update run: the parent's, with the new data and the parent's model as the base;
    :data:`RECOMMENDED`, then the ``key=value`` overrides (e.g. ``update.replay=0 train.epochs=2``)."""
    from toolchain.core.config import apply_overrides, to_dict

    parent = load_run(parent_dir)
    raw = to_dict(parent_config(parent))
    raw["data"].update({"train": data, "dev": dev, "test": test, "max_train_samples": 0})
    raw["model"]["base"] = str(parent.model_dir)
    raw["update"]["parent"] = str(parent.path)
    raw["output_dir"] = output_dir or f"{str(parent.path).rstrip('/')}-update"
    return from_dict(RunConfig, apply_overrides(raw, [*RECOMMENDED, *overrides]))


def update_summary(run_dir: str | Path) -> str:
    """Parent vs this run on the parent's and the new test set, and the promotion verdict."""
    import json

    from toolchain.core.report import format_table

    report = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))["update"]
    name = report["metric"]
    rows = [[f"parent's test ({name})", f"{report['parent_test']['parent']:.4f}", f"{report['parent_test']['run']:.4f}",
             f"{-report['parent_test']['drop_points']:+.2f}"],
            [f"new test ({name})", f"{report['new_test']['parent']:.4f}", f"{report['new_test']['run']:.4f}",
             f"{report['new_test']['gain_points']:+.2f}"]]
    for key, title in (("parent_test_macro_f1", "parent's test (macro_f1)"), ("new_test_macro_f1", "new test (macro_f1)")):
        pair = report.get(key) or {}
        if pair.get("parent") is not None and pair.get("run") is not None:
            rows.append([title, f"{pair['parent']:.4f}", f"{pair['run']:.4f}",
                         f"{100 * (pair['run'] - pair['parent']):+.2f}"])
    verdict = ("promotable" if report["promotable"] else f"NOT promotable: {report['why_not_promotable']}")
    return format_table(["test set", "parent", "this run", "points"], rows) + f"\n{verdict}"
