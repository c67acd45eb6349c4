"""`toolchain train`: config -> run dir (model or adapter + head, tokenizer, metrics, plots, config).

The Hugging Face Trainer runs the loop; this module wires data, method, callbacks and artifacts.
The same command runs under ``torchrun --nproc_per_node N`` (DDP; gloo on CPU); only rank 0 writes.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from toolchain import __version__
from toolchain.core.artifacts import (ARTIFACT_VERSION, MANIFEST, ArtifactError, mark_complete, prepare_run_dir,
                                 mark_incomplete, read_manifest, replace_dir, write_yaml)
from toolchain.core.config import RunConfig, config_hash, from_dict, to_dict, train_metric
from toolchain.data.dataset import check_labels
from toolchain.tasks.joint_data import load_run_splits, run_labels
from toolchain.inference.modeling import load_pretrained, load_tokenizer, resolve_base_model
from toolchain.tasks import get_task
from toolchain.tasks.joint import has_topic_head
from toolchain.core.hardware import is_main, precision_flags, world
from toolchain.train.methods import HEAD_NAMES, PEFT_METHODS, apply_method, parameter_counts
from toolchain.train.comparison import write_test_predictions


def training_arguments(cfg: RunConfig, run_dir: Path):
    from transformers import TrainingArguments

    t = cfg.train
    flags = precision_flags(t.precision)
    rank, size = world()
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=t.epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate, weight_decay=t.weight_decay,
        lr_scheduler_type=t.scheduler, warmup_ratio=t.warmup_ratio, max_grad_norm=t.max_grad_norm or 1e9,
        optim=t.optimizer, bf16=flags["bf16"], fp16=flags["fp16"],
        seed=t.seed, data_seed=t.seed, full_determinism=False,
        eval_strategy="steps", eval_steps=t.eval_steps, save_strategy="steps", save_steps=t.eval_steps,
        save_total_limit=t.save_total_limit, save_safetensors=True,
        load_best_model_at_end=keeps_best_model(cfg), metric_for_best_model=train_metric(cfg), greater_is_better=True,
        logging_steps=t.logging_steps, logging_dir=str(run_dir / "tensorboard"), report_to=["tensorboard"],
        dataloader_num_workers=t.num_workers, disable_tqdm=False, group_by_length=t.group_by_length,
        ddp_backend=None if torch.cuda.is_available() or size == 1 else "gloo",
        use_cpu=not torch.cuda.is_available(), remove_unused_columns=False, label_names=["labels"],
    )


def keeps_best_model(cfg: RunConfig) -> bool:
    """AdaLoRA changes its rank pattern during training (its last phase fine-tunes the final ranks), so
    an earlier checkpoint cannot be loaded back into the final model: it keeps the last state instead."""
    return cfg.method.name != "adalora"


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
    """Re-initialise the task head (a base model's head trained for other labels is not reused)."""
    for name, module in model.named_children():
        if name in HEAD_NAMES and name != "pooler":
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


def estimated_steps(cfg: RunConfig, n_train: int) -> int:
    t = cfg.train
    if t.max_steps > 0:
        return t.max_steps
    per_epoch = math.ceil(n_train / (t.batch_size * world()[1]) / t.gradient_accumulation)
    return max(1, math.ceil(per_epoch * t.epochs))


def manifest(cfg: RunConfig, status: str, labels, base_path, splits, extra=None) -> dict:
    return {
        "artifact_version": ARTIFACT_VERSION, "stage": "train", "status": status,
        "toolchain_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "task": cfg.model.task, "labels": labels, "base_model": base_path,
        "model_format": "peft" if cfg.method.name in PEFT_METHODS else "full",
        "config_hash": config_hash(cfg), "data_files": splits.files if splits else {},
        **(extra or {}), "config": to_dict(cfg),
    }


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> Path:
    from transformers import EarlyStoppingCallback, set_seed

    from toolchain.train.adversarial import AdversarialTrainer
    from toolchain.train.callbacks import AdaLoraBudgetCallback
    from toolchain.train.loss import trainer_class
    from toolchain.core.report import finish_run

    task = get_task(cfg.model.task)
    if hasattr(task, "configure"):
        task.configure(cfg.data)
    run_dir = prepare_run_dir(cfg, resume, overwrite)
    set_seed(cfg.train.seed)
    splits = load_run_splits(cfg)
    if cfg.augment.method != "none":
        from toolchain.data.augment import with_augmented_train

        seed = cfg.train.seed if cfg.augment.seed is None else cfg.augment.seed
        splits = with_augmented_train(splits, cfg.augment, cfg.model.task, seed)
    parent = parent_data = None
    if cfg.update.parent:   # continuing a parent run's model (toolchain update)
        from toolchain.train import update

        parent = update.load_parent(cfg)
        parent_data = update.parent_splits(parent)
        splits = update.with_parent_data(cfg, splits, parent_data)
        base_path = update.parent_base(parent, run_dir)
    else:
        base_path = resolve_base_model(cfg.model.base)
    labels, label_source = resolve_labels(run_labels(cfg, splits), base_path, task)
    task = get_task(cfg.model.task, labels)
    for role in ("dev", "test"):
        check_labels(getattr(splits, role), labels, role)
    if parent_data is not None:
        check_labels(parent_data.test, labels, "parent test")
    lineage = {"lineage": update.lineage(parent)} if parent is not None else {}
    distill = None
    if cfg.distill.teacher:   # teachers and unlabeled texts checked before the run dir is written
        from toolchain.train.distill import Distillation

        distill = Distillation.check(cfg, labels, splits)
    if is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        mark_incomplete(run_dir, "training in progress or interrupted; continue with: toolchain train --resume "
                                 f"{run_dir}")
        write_yaml(run_dir / MANIFEST, manifest(cfg, "incomplete", labels, base_path, splits,
                                                {"label_source": label_source, **lineage}))

    tokenizer = load_tokenizer(base_path)
    label2id = {label: i for i, label in enumerate(labels)}
    encode_train = getattr(task, "encode_for_training", task.encode)
    datasets = {role: (encode_train if role == "train" else task.encode)(
        getattr(splits, role), tokenizer, label2id, cfg.data.max_length) for role in ("train", "dev", "test")}
    if distill:   # the teacher's probabilities carried with each training example (+ the unlabeled texts)
        distill.attach(task, splits, datasets, tokenizer)
    total_steps = estimated_steps(cfg, len(datasets["train"]))
    model = build_model(cfg, task, labels, base_path, total_steps, new_head=label_source == NEW_HEAD)
    counts = parameter_counts(model)

    callbacks = []
    if cfg.train.early_stopping_patience and keeps_best_model(cfg):
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    adalora = AdaLoraBudgetCallback(model) if cfg.method.name == "adalora" else None
    if adalora:
        callbacks.append(adalora)

    def compute_metrics(prediction):
        return task.summary(task.metrics(prediction.predictions, prediction.label_ids, labels))

    from transformers import Trainer
    base_cls = AdversarialTrainer if cfg.adversarial.kind != "none" else Trainer
    kwargs = {"adversarial": cfg.adversarial} if base_cls is AdversarialTrainer else {}
    head_loss = training_loss(cfg, labels, datasets["train"])
    if head_loss is not None:
        kwargs["head_loss"] = head_loss
    trainer_cls = trainer_class(base_cls, head_loss is not None)
    if distill:
        trainer_cls = distill.trainer_class(trainer_cls)
        kwargs["distill_loss"] = distill.loss
    if cfg.update.l2sp > 0:
        trainer_cls = update.with_penalty(trainer_cls)
        kwargs["parent_penalty"] = update.ParentPenalty(model, cfg.update.l2sp)
    trainer = trainer_cls(
        model=model, args=training_arguments(cfg, run_dir), train_dataset=datasets["train"],
        eval_dataset=datasets["dev"], data_collator=task.collator(tokenizer), processing_class=tokenizer,
        compute_metrics=compute_metrics, callbacks=callbacks, **kwargs)
    parent_on_new = trainer.predict(datasets["test"]) if parent is not None else None  # the parent, before
    started = time.time()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    elapsed = time.time() - started

    # group_by_length also reorders evaluation batches (transformers' eval sampler): the final predictions keep
    # the split's order, so test_predictions.json, the distillation report and paired comparisons line up
    trainer.args.group_by_length = False
    dev = trainer.predict(datasets["dev"])
    test = trainer.predict(datasets["test"])
    if is_main() and not has_topic_head(labels):
        write_test_predictions(run_dir, cfg.model.task, test.predictions, test.label_ids, labels,
                               splits.files.get("test", {}).get("sha256"))
    metrics = {
        "dev": task.metrics(dev.predictions, dev.label_ids, labels),
        "test": task.metrics(test.predictions, test.label_ids, labels),
        "train": {**result.metrics, "wall_seconds": elapsed, "global_step": trainer.state.global_step,
                  "best_checkpoint": trainer.state.best_model_checkpoint, "metric_for_best_model": train_metric(cfg),
                  "precision": precision_flags(cfg.train.precision)["resolved_precision"],
                  "world_size": world()[1]},
        "parameters": counts, "method": cfg.method.name, "adversarial": cfg.adversarial.kind,
    }
    if adalora:
        metrics["adalora"] = {"update_and_allocate_calls": adalora.calls, "rank_history": adalora.budget_history,
                              "final_rank_total": adalora.current_ranks(),
                              "initial_rank_total": adalora.initial_budget}
    if distill:
        metrics["distill"] = distill.report(test.predictions, test.label_ids, labels, task)
    if parent is not None:
        parent_test = task.encode(parent_data.test, tokenizer, label2id, cfg.data.max_length)
        on_parent = trainer.predict(parent_test)
        scores = update.UpdateScores(task.metrics(parent_on_new.predictions, parent_on_new.label_ids, labels),
                                     task.metrics(on_parent.predictions, on_parent.label_ids, labels))
        metrics["parent_test"] = scores.run_on_parent
        metrics["update"] = update.update_report(cfg, parent, scores, metrics["test"])
        lineage["promotable"] = metrics["update"]["promotable"]
    report_rank_agreement(trainer.model, metrics)
    if trainer.is_world_process_zero():
        save_model(trainer.model, tokenizer, run_dir)
        finish_run(run_dir, trainer.state.log_history, metrics, labels, task)
        write_yaml(run_dir / MANIFEST, manifest(cfg, "complete", labels, base_path, splits,
                                                {"parameters": counts, "label_source": label_source, **lineage,
                                                 **({"distill": distill.record} if distill else {})}))
        mark_complete(run_dir)
        if parent is not None and cfg.method.name not in PEFT_METHODS:
            update.drop_parent_copy(run_dir)   # a full model holds all of it; a PEFT run keeps its merged base
    return run_dir


def training_loss(cfg: RunConfig, labels: list[str], train_set):
    """The head loss (per-head cross-entropy, class weights), or None when the model's own loss is it."""
    from toolchain.tasks.joint import has_topic_head
    from toolchain.train.loss import HeadLoss, class_weights

    joint = has_topic_head(labels)
    if cfg.train.class_weights == "none" and not joint:
        return None
    label_ids = [f["labels"] for f in train_set.features if f["labels"] != -100]   # -100: an unlabeled text
    weights = class_weights(label_ids, labels, cfg.train.class_weights)
    return HeadLoss(labels, weights if cfg.train.class_weights != "none" else None, cfg.topic.loss_weight)


def report_rank_agreement(model, metrics: dict) -> None:
    """Print a fingerprint of the final weights and test metric per rank (DDP ranks must agree)."""
    rank, size = world()
    if size == 1:
        return
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).cpu().numpy().round(5).tobytes())
    test = metrics["test"]
    headline = test.get("accuracy", test.get("f1"))
    print(f"[rank {rank}/{size}] weights_sha256={digest.hexdigest()[:16]} test_metric={headline:.6f}", flush=True)


def save_model(model, tokenizer, run_dir: Path) -> None:
    """Write model (or adapter + head) and tokenizer to model.tmp/, then rename to model/."""
    tmp = run_dir / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, run_dir / "model")


def resume_config(run_dir: str | Path) -> RunConfig:
    """The config of an interrupted run, read from its toolchain.yaml."""
    import yaml

    path = Path(run_dir) / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{run_dir}: no {MANIFEST}; nothing to resume")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if data.get("status") == "complete":
        raise ArtifactError(f"{run_dir}: this run is already complete")
    cfg = from_dict(RunConfig, data["config"])
    return replace(cfg, output_dir=str(run_dir))


__all__ = ["train", "resume_config", "read_manifest"]
