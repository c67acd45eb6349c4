"""`toolchain evaluate` and `toolchain compare`: score runs on any labelled file, side by side."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from toolchain.core.artifacts import ArtifactError, RunInfo, load_run
from toolchain.core.config import DataConfig, from_dict
from toolchain.data.dataset import check_labels, read_file
from toolchain.data.readers import DataError
from toolchain.inference.run_model import load_run_model, predict_logits
from toolchain.tasks import get_task
from toolchain.tasks.joint import has_topic_head
from toolchain.core.report import base_name, format_table, plot_confusion


def evaluate_file(run_dir: str, data: str | None, split: str = "test", overrides: dict | None = None) -> dict:
    run = load_run(run_dir)
    if has_topic_head(run.labels):
        return evaluate_joint(run, data, split, overrides)
    task = get_task(run.task)
    overrides = dict(overrides or {})
    if data is not None and run.task == "token-classification":
        overrides.setdefault("tag_scheme", "auto")  # another file may use IO tags (converted to IOB2)
    data_cfg = from_dict(DataConfig, {**run.config["data"], **overrides})
    if hasattr(task, "configure"):
        task.configure(data_cfg)
    path = data or run.manifest["data_files"][split]["path"]
    if data is None and run.manifest["data_files"][split].get("split"):
        from toolchain.data.dataset import load_splits
        examples = getattr(load_splits(data_cfg), split)
    else:
        examples = read_file(data_cfg, path)
    check_labels(examples, run.labels, "evaluation")
    model, tokenizer = load_run_model(run)
    logits = predict_logits(model, tokenizer, task, examples, run.max_length)
    gold = task.gold_ids(examples, run.labels, tokenizer, run.max_length) if hasattr(task, "gold_ids") else \
        np.array([run.labels.index(ex.label) for ex in examples])
    metrics = task.metrics(logits, gold, run.labels)
    metrics["data"] = str(path)
    return metrics


def evaluate_joint(run: RunInfo, data: str | None, split: str, overrides: dict | None) -> dict:
    """A run with a topic head: both heads on the run's own split, or the one head whose classes a file's
    labels are (a sentiment file scores the main head, a topic file the topic head)."""
    from toolchain.core.config import RunConfig
    from toolchain.tasks.joint_data import load_run_splits

    task = get_task(run.task, run.labels)
    model, tokenizer = load_run_model(run)
    if data is None:
        examples = getattr(load_run_splits(from_dict(RunConfig, run.config)), split)
        logits = predict_logits(model, tokenizer, task, examples, run.max_length)
        metrics = task.metrics(logits, np.array([run.labels.index(ex.label) for ex in examples]), run.labels)
        return {**metrics, "data": f"{run.path}: {split} split of both heads"}
    examples = read_file(from_dict(DataConfig, {**run.config["data"], **dict(overrides or {})}), data)
    head = file_head(task.heads, examples, data)
    logits = head.columns(predict_logits(model, tokenizer, task, examples, run.max_length))
    gold = np.array([head.labels.index(ex.label) for ex in examples])
    return {**get_task(run.task).metrics(logits, gold, list(head.labels)), "head": head.name, "data": str(data)}


def file_head(heads, examples, path: str):
    """The head whose classes hold every label of a file, or an error naming the labels."""
    seen = {ex.label for ex in examples}
    for head in heads:
        if seen <= set(head.labels):
            return head
    known = "; ".join(f"{h.name}: {', '.join(h.labels)}" for h in heads)
    raise DataError(f"{path}: its labels {', '.join(sorted(map(str, seen)))} are not all classes of one head ({known})")


def per_class_table(metrics: dict) -> str:
    """Per class (sequence classification) or per entity type (token classification)."""
    key, name = ("per_class", "class") if "per_class" in metrics else ("per_type", "entity type")
    rows = [[label, v["precision"], v["recall"], v["f1"], v["support"]] for label, v in metrics[key].items()]
    return format_table([name, "precision", "recall", "f1", "support"], rows)


def run_evaluate(run_dir: str, data: str | None, split: str, json_out: str | None) -> dict:
    metrics = evaluate_file(run_dir, data, split)
    print(f"{metrics['data']}: " + "  ".join(f"{k}={metrics[k]:.4f}" for k in ("accuracy", "macro_f1", "f1")
                                               if k in metrics))
    if "per_class" in metrics or "per_type" in metrics:
        print(per_class_table(metrics))
    for name, head in metrics.get("heads", {}).items():
        print(f"{name} head: accuracy={head['accuracy']:.4f}  macro_f1={head['macro_f1']:.4f}  "
              f"weighted_f1={head['weighted_f1']:.4f}")
        print(per_class_table(head))
    if "confusion_matrix" in metrics and json_out:
        plot_confusion(metrics["confusion_matrix"], metrics["labels"], Path(json_out).with_suffix(".png"),
                       title=f"confusion matrix: {Path(metrics['data']).name}")
    if json_out:
        Path(json_out).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def compare_runs(run_dirs: list[str], data: str | None = None, split: str = "test") -> str:
    """A table of several runs (e.g. head = before adaptation vs full / LoRA = after); seed groups are compared
    by :func:`toolchain.train.comparison.compare_groups` (the ``compare`` command picks which). The headline
    column is accuracy (sequence classification) or entity F1 (token classification): runs of different task
    types are refused rather than put under one column name."""
    runs = [(run_dir, load_run(run_dir)) for run_dir in run_dirs]   # a run may be listed twice
    tasks = {run.task for _, run in runs}
    if len(tasks) > 1:   # the headline column is accuracy for one task type and entity F1 for the other
        raise ArtifactError("compare: these runs are of different task types ("
                            + ", ".join(f"{Path(d).name}: {run.task}" for d, run in runs)
                            + "); their headline metrics and per-class columns differ, so compare the runs of "
                            "each task type separately")
    rows, classes, headlines = [], None, set()
    for run_dir, run in runs:
        if data:
            metrics = evaluate_file(run_dir, data, split)
        else:
            metrics = json.loads((Path(run_dir) / "metrics.json").read_text())[split]
        stored = json.loads((Path(run_dir) / "metrics.json").read_text())
        # a run with a topic head: one row per head (its own split and classes)
        for name, head in ([(Path(run_dir).name, metrics)] if "heads" not in metrics else
                           [(f"{Path(run_dir).name} [{h}]", m) for h, m in metrics["heads"].items()]):
            per_class = head.get("per_class") or head.get("per_type") or {}
            classes = classes or list(per_class)
            first = "accuracy" if "accuracy" in head else "f1"
            headlines.add(first)
            headline = [head.get(first), head.get("macro_f1")]
            rows.append([name, run.config["method"]["name"], base_name(run.base_model),
                         f"{stored['parameters']['trainable']:,}", *headline,
                         *(per_class[c]["f1"] if c in per_class else "-" for c in classes),
                         f"{stored['train'].get('wall_seconds', 0):.0f}s"])
    if len(headlines) > 1:   # runs of one task type all score by the same metric; never label a column wrong
        raise ArtifactError(f"compare: the runs' headline metrics differ ({', '.join(sorted(headlines))}); compare "
                            f"runs scored by the same metric")
    first = headlines.pop() if headlines else "accuracy"
    header = ["run", "method", "base", "trainable", first, "macro_f1", *(f"f1:{c}" for c in classes), "train time"]
    return format_table(header, rows) + ancestry(run_dirs)


def ancestry(run_dirs: list[str]) -> str:
    """Each updated run's lineage (parent first) and its update figures; empty when no run has a parent."""
    lines = []
    for run_dir in run_dirs:
        run = load_run(run_dir)
        chain = run.manifest.get("lineage") or []
        if not chain:
            continue
        steps = [f"{a['run']} (config {str(a.get('config_hash'))[:12]}, "
                 + ", ".join(f"test {k} {v:.4f}" for k, v in (a.get("test") or {}).items()) + ")" for a in chain]
        lines.append(f"  {Path(run_dir).name} <- " + " <- ".join(steps))
        update = json.loads((Path(run_dir) / "metrics.json").read_text()).get("update")
        if update:
            old, new, metric = update["parent_test"], update["new_test"], update["metric"]
            verdict = "promotable" if update["promotable"] else "NOT promotable"
            lines.append(f"    {metric}: parent's test {old['parent']:.4f} -> {old['run']:.4f} "
                         f"({-old['drop_points']:+.2f} points), new test {new['parent']:.4f} -> {new['run']:.4f} "
                         f"({new['gain_points']:+.2f} points); {verdict}")
    return "\nancestry (nearest parent first):\n" + "\n".join(lines) if lines else ""
