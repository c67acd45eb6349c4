"""Score any variant (PyTorch or ONNX Runtime) with the task metric on the run's dev and test splits."""
from __future__ import annotations

import logging

import numpy as np

from toolchain.core.artifacts import RunInfo
from toolchain.core.config import DataConfig, from_dict

log = logging.getLogger(__name__)


def run_task(run: RunInfo):
    """The run's Task, configured from the run's data options as training configured it."""
    from toolchain.tasks import get_task

    task = get_task(run.task, run.labels)
    if hasattr(task, "configure"):
        task.configure(from_dict(DataConfig, run.config["data"]))
    return task


def load_run_splits(run: RunInfo):
    """The run's train/dev/test examples, read as the run read them (its resolved data config; with a topic
    head, the topic data set's beside the main one's)."""
    from toolchain.core.config import RunConfig
    from toolchain.data.dataset import check_labels
    from toolchain.tasks.joint_data import load_run_splits as load_splits_of

    splits = load_splits_of(from_dict(RunConfig, run.config))
    for role, info in splits.files.items():
        recorded = run.manifest.get("data_files", {}).get(role, {}).get("sha256")
        if recorded and recorded != info["sha256"]:
            log.warning("%s data %s changed since training (sha256 differs)", role, info["path"])
    check_labels(splits.dev + splits.test, run.labels, "dev/test")
    return splits


def gold_ids(task, examples, labels: list[str], tokenizer, max_length: int) -> np.ndarray:
    if hasattr(task, "gold_ids"):
        return task.gold_ids(examples, labels, tokenizer, max_length)
    return np.array([labels.index(ex.label) for ex in examples])


def agreement(pred: np.ndarray, reference: np.ndarray, gold: np.ndarray) -> float:
    """Share of scored positions where two models predict the same label (tokens: gold != -100)."""
    if gold.ndim == 1:
        return float(np.mean(pred == reference))
    width = min(pred.shape[1], gold.shape[1])
    mask = gold[:, :width] != -100
    return float(np.mean(pred[:, :width][mask] == reference[:, :width][mask])) if mask.any() else 1.0


def score(task, logits: np.ndarray, gold: np.ndarray, labels: list[str], reference: np.ndarray | None) -> dict:
    """Headline task metrics plus label agreement with the reference logits (fp32 PyTorch)."""
    metrics = task.summary(task.metrics(logits, gold, labels))
    pred = task.predictions(logits)
    metrics["examples"] = len(gold)
    metrics["agreement"] = agreement(pred, task.predictions(reference), gold) if reference is not None else 1.0
    return {k: float(v) for k, v in metrics.items()}


def headline_metric(task, metric: str, sample: dict) -> str:
    """The accuracy gate's metric: the configured one, or the task's first headline figure."""
    if metric != "auto":
        if metric not in sample:
            from toolchain.core.config import ConfigError
            raise ConfigError(f"accuracy_gate.metric: {metric!r} is not a metric of this task; available: "
                              f"{', '.join(k for k in sample if k != 'agreement')}")
        return metric
    return next(iter(sample))
