"""`toolchain train`: config -> run dir (model or adapter + head, tokenizer, metrics, plots, config).

The Hugging Face Trainer runs the loop; this module wires data, method, callbacks and artifacts.
The same command runs under ``torchrun --nproc_per_node N`` (DDP; gloo on CPU); only rank 0 writes.
"""
from __future__ import annotations

import hashlib
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from toolchain import __version__
from toolchain.core.artifacts import (ARTIFACT_VERSION, MANIFEST, ArtifactError, mark_complete, mark_incomplete,
                                      read_manifest, replace_dir, write_yaml)
from toolchain.core.run_dirs import prepare_run_dir
from toolchain.core.config import RunConfig, config_hash, from_dict, to_dict, train_metric
from toolchain.data.dataset import check_labels
from toolchain.tasks.joint_data import load_run_splits, run_labels
from toolchain.inference.modeling import load_tokenizer, resolve_base_model
from toolchain.tasks import get_task
from toolchain.tasks.joint import has_topic_head
from toolchain.core.hardware import is_main, precision_flags, world
from toolchain.train.methods import PEFT_METHODS, parameter_counts
from toolchain.train.model import NEW_HEAD, build_model, resolve_labels
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


@dataclass
class Run:
    """What the steps of one training run share (filled in order by :func:`train`'s steps)."""
    cfg: RunConfig
    task: object
    run_dir: Path
    splits: object
    base_path: str = ""
    labels: list = field(default_factory=list)
    label_source: str = ""
    parent: object = None             # toolchain update: the parent run and its data
    parent_data: object = None
    lineage: dict = field(default_factory=dict)
    distill: object = None            # distillation: the teachers' soft targets
    tokenizer: object = None
    datasets: dict = field(default_factory=dict)
    model: object = None
    adalora: object = None            # AdaLoRA's budget callback (its update_and_allocate hook)


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Fine-tune ``cfg`` into its run dir, as a recipe of named steps."""
    from transformers import set_seed

    run = open_run(cfg, resume, overwrite)
    set_seed(cfg.train.seed)
    read_data(run)
    choose_base_and_labels(run)
    check_teachers(run)
    start_run_dir(run)
    encode_splits(run)
    steps = estimated_steps(cfg, len(run.datasets["train"]))
    run.model = build_model(cfg, run.task, run.labels, run.base_path, steps, new_head=run.label_source == NEW_HEAD)
    counts = parameter_counts(run.model)
    trainer = make_trainer(run)
    parent_before = trainer.predict(run.datasets["test"]) if run.parent is not None else None  # the parent, before
    started = time.time()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    elapsed = time.time() - started
    metrics = final_metrics(run, trainer, {**result.metrics, "wall_seconds": elapsed}, counts, parent_before)
    report_rank_agreement(trainer.model, metrics)
    write_run(run, trainer, metrics, counts)
    return run.run_dir


def open_run(cfg: RunConfig, resume: bool, overwrite: bool) -> Run:
    """The task configured from the data options, and the run dir checked (resume) or cleared (overwrite)."""
    task = get_task(cfg.model.task)
    if hasattr(task, "configure"):
        task.configure(cfg.data)
    return Run(cfg, task, prepare_run_dir(cfg, resume, overwrite), None)


def read_data(run: Run) -> None:
    """The train/dev/test splits (with a topic head, both data sets), augmented and, for an update, with the
    replayed parent examples; the base model is the parent's for an update."""
    cfg = run.cfg
    run.splits = load_run_splits(cfg)
    if cfg.augment.method != "none":
        from toolchain.data.augment import with_augmented_train

        seed = cfg.train.seed if cfg.augment.seed is None else cfg.augment.seed
        run.splits = with_augmented_train(run.splits, cfg.augment, cfg.model.task, seed)
    if cfg.update.parent:   # continuing a parent run's model (toolchain update)
        from toolchain.train import update

        run.parent = update.load_parent(cfg)
        run.parent_data = update.parent_splits(run.parent)
        run.splits = update.with_parent_data(cfg, run.splits, run.parent_data)
        run.base_path = update.parent_base(run.parent, run.run_dir)
        run.lineage = {"lineage": update.lineage(run.parent)}
    else:
        run.base_path = resolve_base_model(cfg.model.base)


def choose_base_and_labels(run: Run) -> None:
    """The label map (the base model's head when it has these labels, else the train data's) checked on every
    split; the task built for it."""
    run.labels, run.label_source = resolve_labels(run_labels(run.cfg, run.splits), run.base_path, run.task)
    run.task = get_task(run.cfg.model.task, run.labels)
    for role in ("dev", "test"):
        check_labels(getattr(run.splits, role), run.labels, role)
    if run.parent_data is not None:
        check_labels(run.parent_data.test, run.labels, "parent test")


def check_teachers(run: Run) -> None:
    """Distillation: teachers and unlabeled texts checked before the run dir is written."""
    if run.cfg.distill.teacher or run.cfg.distill.topic_teacher:
        from toolchain.train.distill import Distillation

        run.distill = Distillation.check(run.cfg, run.labels, run.splits)


def start_run_dir(run: Run) -> None:
    """The run dir marked INCOMPLETE, with a manifest saying how to resume it (rank 0 only)."""
    if is_main():
        run.run_dir.mkdir(parents=True, exist_ok=True)
        mark_incomplete(run.run_dir, "training in progress or interrupted; continue with: toolchain train --resume "
                                     f"{run.run_dir}")
        write_yaml(run.run_dir / MANIFEST, manifest(run.cfg, "incomplete", run.labels, run.base_path, run.splits,
                                                    {"label_source": run.label_source, **run.lineage}))


def encode_splits(run: Run) -> None:
    """Every split tokenized by the base model's tokenizer (the teachers' probabilities attached to train)."""
    run.tokenizer = load_tokenizer(run.base_path)
    label2id = {label: i for i, label in enumerate(run.labels)}
    encode_train = getattr(run.task, "encode_for_training", run.task.encode)
    run.datasets = {role: (encode_train if role == "train" else run.task.encode)(
        getattr(run.splits, role), run.tokenizer, label2id, run.cfg.data.max_length)
        for role in ("train", "dev", "test")}
    if run.distill:   # the teacher's probabilities carried with each training example (+ the unlabeled texts)
        run.distill.attach(run.task, run.splits, run.datasets, run.tokenizer)


def callbacks_of(run: Run) -> list:
    """Early stopping, and AdaLoRA's budget reallocation after every optimizer step (kept on ``run``)."""
    from transformers import EarlyStoppingCallback

    from toolchain.train.callbacks import AdaLoraBudgetCallback

    callbacks = []
    if run.cfg.train.early_stopping_patience and keeps_best_model(run.cfg):
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=run.cfg.train.early_stopping_patience))
    run.adalora = AdaLoraBudgetCallback(run.model) if run.cfg.method.name == "adalora" else None
    if run.adalora:
        callbacks.append(run.adalora)
    return callbacks


def make_trainer(run: Run):
    """The Hugging Face Trainer composed for this run: adversarial training, the head loss, distillation and the
    update penalty are mixins of one class (toolchain.train.loss.trainer_class and friends)."""
    from transformers import Trainer

    from toolchain.train.adversarial import AdversarialTrainer
    from toolchain.train.loss import trainer_class

    cfg = run.cfg
    base_cls = AdversarialTrainer if cfg.adversarial.kind != "none" else Trainer
    kwargs = {"adversarial": cfg.adversarial} if base_cls is AdversarialTrainer else {}
    head_loss = training_loss(cfg, run.labels, run.datasets["train"])
    if head_loss is not None:
        kwargs["head_loss"] = head_loss
    trainer_cls = trainer_class(base_cls, head_loss is not None)
    if run.distill:
        trainer_cls = run.distill.trainer_class(trainer_cls)
        kwargs["distill_loss"] = run.distill.loss
    if cfg.update.l2sp > 0:
        from toolchain.train import update

        trainer_cls = update.with_penalty(trainer_cls)
        kwargs["parent_penalty"] = update.ParentPenalty(run.model, cfg.update.l2sp)
    task, labels = run.task, run.labels

    def compute_metrics(prediction):
        return task.summary(task.metrics(prediction.predictions, prediction.label_ids, labels))

    return trainer_cls(
        model=run.model, args=training_arguments(cfg, run.run_dir), train_dataset=run.datasets["train"],
        eval_dataset=run.datasets["dev"], data_collator=task.collator(run.tokenizer), processing_class=run.tokenizer,
        compute_metrics=compute_metrics, callbacks=callbacks_of(run), **kwargs)


def final_metrics(run: Run, trainer, train_metrics: dict, counts: dict, parent_before) -> dict:
    """Dev and test metrics of the final (best) model, the training figures, and the method's own report."""
    cfg, task, labels = run.cfg, run.task, run.labels
    # group_by_length also reorders evaluation batches (transformers' eval sampler): the final predictions keep
    # the split's order, so test_predictions.json, the distillation report and paired comparisons line up
    trainer.args.group_by_length = False
    dev = trainer.predict(run.datasets["dev"])
    test = trainer.predict(run.datasets["test"])
    if is_main() and not has_topic_head(labels):
        write_test_predictions(run.run_dir, cfg.model.task, test.predictions, test.label_ids, labels,
                               run.splits.files.get("test", {}).get("sha256"))
    metrics = {
        "dev": task.metrics(dev.predictions, dev.label_ids, labels),
        "test": task.metrics(test.predictions, test.label_ids, labels),
        "train": {**train_metrics, "global_step": trainer.state.global_step,
                  "best_checkpoint": trainer.state.best_model_checkpoint, "metric_for_best_model": train_metric(cfg),
                  "precision": precision_flags(cfg.train.precision)["resolved_precision"],
                  "world_size": world()[1]},
        "parameters": counts, "method": cfg.method.name, "adversarial": cfg.adversarial.kind,
    }
    if run.adalora:
        a = run.adalora
        metrics["adalora"] = {"update_and_allocate_calls": a.calls, "rank_history": a.budget_history,
                              "final_rank_total": a.current_ranks(), "initial_rank_total": a.initial_budget}
    if run.distill:
        metrics["distill"] = run.distill.report(test.predictions, test.label_ids, labels, task)
    if run.parent is not None:
        add_update_scores(run, trainer, metrics, parent_before)
    return metrics


def add_update_scores(run: Run, trainer, metrics: dict, parent_before) -> None:
    """toolchain update: the run and its parent on both test sets, and whether the run may be promoted."""
    from toolchain.train import update

    task, labels = run.task, run.labels
    label2id = {label: i for i, label in enumerate(labels)}
    parent_test = task.encode(run.parent_data.test, run.tokenizer, label2id, run.cfg.data.max_length)
    on_parent = trainer.predict(parent_test)
    scores = update.UpdateScores(task.metrics(parent_before.predictions, parent_before.label_ids, labels),
                                 task.metrics(on_parent.predictions, on_parent.label_ids, labels))
    metrics["parent_test"] = scores.run_on_parent
    metrics["update"] = update.update_report(run.cfg, run.parent, scores, metrics["test"])
    run.lineage["promotable"] = metrics["update"]["promotable"]


def write_run(run: Run, trainer, metrics: dict, counts: dict) -> None:
    """Model, tokenizer, metrics, curves and the complete manifest; the INCOMPLETE marker removed last."""
    from toolchain.core.report import finish_run

    if not trainer.is_world_process_zero():
        return
    cfg = run.cfg
    save_model(trainer.model, run.tokenizer, run.run_dir)
    finish_run(run.run_dir, trainer.state.log_history, metrics, run.labels, run.task)
    extra = {"parameters": counts, "label_source": run.label_source, **run.lineage,
             **({"distill": run.distill.record} if run.distill else {})}
    write_yaml(run.run_dir / MANIFEST, manifest(cfg, "complete", run.labels, run.base_path, run.splits, extra))
    mark_complete(run.run_dir)
    if run.parent is not None and cfg.method.name not in PEFT_METHODS:
        from toolchain.train import update

        update.drop_parent_copy(run.run_dir)   # a full model holds all of it; a PEFT run keeps its merged base


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
