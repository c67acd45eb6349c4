"""Ensembles of run dirs: the mean of several runs' class probabilities, scored on one labelled file.

``toolchain ensemble RUN_DIR [RUN_DIR ...]`` averages the softmax probabilities of every member (any
method, any base model; a seed group from ``train --seeds`` stands for its runs) on the same examples and
prints the ensemble's metrics next to each member's. Each member reads the texts with its own tokenizer
and max length, so members of different bases can be mixed; their columns are aligned by label name.
For token classification the members must cut every sentence into the same word pieces (the same
tokenizer and max length): the per-token probabilities are then averaged position by position.

The same machinery gives a distillation teacher its probabilities (:mod:`toolchain.train.distill`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.core.artifacts import ArtifactError, RunInfo
from toolchain.core.config import DataConfig, from_dict
from toolchain.data.dataset import check_labels, read_file
from toolchain.tasks import get_task
from toolchain.inference.members import check_members, ensemble_probabilities, expand_members




def labelled_examples(run: RunInfo, data: str | None, split: str) -> tuple[list, str]:
    """The examples to score: ``data``, else the run's own ``split`` (re-split from its train file if so recorded)."""
    overrides = {"tag_scheme": "auto"} if data is not None and run.task == "token-classification" else {}
    data_cfg = from_dict(DataConfig, {**run.config["data"], **overrides})
    if data is not None:
        return read_file(data_cfg, data), str(data)
    info = (run.manifest.get("data_files") or {}).get(split)
    if not info:
        raise ArtifactError(f"{run.path}: records no {split} data; pass --data FILE")
    if info.get("split"):
        from toolchain.data.dataset import load_splits

        return getattr(load_splits(data_cfg), split), f"{info['path']} ({split} split of {run.path})"
    return read_file(data_cfg, info["path"]), info["path"]


def gold_ids(run: RunInfo, examples: list, labels: list[str]) -> np.ndarray:
    task = get_task(run.task)
    if hasattr(task, "gold_ids"):
        from toolchain.inference.modeling import load_tokenizer

        return task.gold_ids(examples, labels, load_tokenizer(str(run.model_dir)), run.max_length)
    return np.array([labels.index(ex.label) for ex in examples])


def evaluate_ensemble(paths: list[str], data: str | None = None, split: str = "test") -> dict:
    """Metrics of every member and of the mean of their probabilities, on one labelled file."""
    runs = expand_members(paths)
    check_members(runs)
    labels = list(runs[0].labels)
    examples, data_name = labelled_examples(runs[0], data, split)
    check_labels(examples, labels, "evaluation")
    mean, members = ensemble_probabilities(runs, examples, labels)
    gold = gold_ids(runs[0], examples, labels)
    task = get_task(runs[0].task)
    return {"data": data_name, "task": runs[0].task, "labels": labels,
            "members": [{"run": str(run.path), "method": run.config["method"]["name"], "base_model": run.base_model,
                         "config_hash": run.manifest.get("config_hash"), "metrics": task.metrics(probs, gold, labels)}
                        for run, probs in zip(runs, members)],
            "ensemble": task.metrics(mean, gold, labels), "notes": other_test_sets(runs) if data is None else []}


def other_test_sets(runs: list[RunInfo]) -> list[str]:
    """Members tested on another file than the first run: its test texts may be in their training data."""
    def digest(run):
        return ((run.manifest.get("data_files") or {}).get("test") or {}).get("sha256")

    first = digest(runs[0])
    return [f"{run.path} was tested on another file than {runs[0].path}: its training data may hold some of the "
            f"texts scored here" for run in runs[1:] if first and digest(run) and digest(run) != first]


def short_name(run_dir: str) -> str:
    """The run dir's last two path parts (a seed group's members read GROUP/seed-S)."""
    parts = Path(run_dir).resolve().parts
    return "/".join(parts[-2:])


def ensemble_table(result: dict) -> str:
    from toolchain.core.report import base_name
    from toolchain.core.report import format_table

    names = ("accuracy", "macro_f1") if result["task"] == "sequence-classification" else ("f1", "precision", "recall")
    classes = list(result["ensemble"].get("per_class") or result["ensemble"].get("per_type") or {})

    def row(name, method, base, metrics):
        per_class = metrics.get("per_class") or metrics.get("per_type") or {}
        return [name, method, base, *(metrics[n] for n in names),
                *(per_class[c]["f1"] if c in per_class else "-" for c in classes)]

    rows = [row(short_name(m["run"]), m["method"], base_name(m["base_model"]), m["metrics"]) for m in result["members"]]
    rows.append(row(f"ensemble ({len(result['members'])})", "mean prob.", "-", result["ensemble"]))
    return format_table(["run", "method", "base", *names, *(f"f1:{c}" for c in classes)], rows)


def run_ensemble(paths: list[str], data: str | None, split: str, json_out: str | None) -> dict:
    result = evaluate_ensemble(paths, data, split)
    print(f"{result['data']}: {len(result['members'])} members, probabilities averaged")
    print(ensemble_table(result))
    for note in result["notes"]:
        print(f"note: {note}")
    if json_out:
        from toolchain.core.artifacts import write_json

        write_json(json_out, result)
    return result


__all__ = ["evaluate_ensemble", "ensemble_probabilities", "expand_members", "check_members", "run_ensemble"]
