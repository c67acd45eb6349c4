"""Several seeds of one configuration, and whether two configurations really differ.

``toolchain train --config X --seeds 3`` trains ``OUTPUT/seed-S`` for S = train.seed, +1, +2 and writes
``OUTPUT/seeds.json``: every run's dev and test metrics, their mean and sample standard deviation.
One seed, one split: a 240-sentence test set moves 0.42 points per sentence, so a gain smaller than
the seeds' spread is not a gain.

``toolchain compare GROUP_A GROUP_B`` (seed groups) shows mean +- std per metric and a **paired
bootstrap** between the first group and each other one on the same test set: each test item's score is
averaged over the seeds of a group (correct or not for classification; the item's entities for NER),
the items are resampled with replacement, and the share of resamples whose difference has the other
sign gives a two-sided p-value, with the 95% interval of the difference. Every run keeps its test
predictions (``test_predictions.json``) for it.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np

from toolchain.artifacts import ArtifactError, write_json

GROUP_FILE = "seeds.json"
PREDICTIONS_FILE = "test_predictions.json"
HEADLINE = ("accuracy", "macro_f1", "f1", "precision", "recall")


def seed_configs(cfg, count: int) -> list:
    """``count`` copies of ``cfg``: seeds train.seed, +1, ...; run dirs OUTPUT/seed-S."""
    if count < 1:
        raise ValueError(f"--seeds: expected at least 1, got {count}")
    root = cfg.output_dir.rstrip("/")
    return [replace(cfg, output_dir=f"{root}/seed-{cfg.train.seed + i}",
                    train=replace(cfg.train, seed=cfg.train.seed + i)) for i in range(count)]


def train_seeds(cfg, count: int, overwrite: bool = False) -> Path:
    """Train every seed (a complete run with the same config is reused), then summarize the group."""
    from toolchain.build import run_state
    from toolchain.config import config_hash
    from toolchain.train.runner import train

    group = Path(cfg.output_dir)
    if group.is_dir() and (group / "toolchain.yaml").is_file():
        raise ArtifactError(f"{group} is a run dir; a seed group needs its own folder (output_dir=NEW_DIR)")
    runs = []
    for index, seed_cfg in enumerate(seed_configs(cfg, count), 1):
        run_dir = Path(seed_cfg.output_dir)
        state = run_state(run_dir, config_hash(seed_cfg))   # up to date | resume (interrupted) | train
        if state == "resume" and overwrite:
            state = "train"
        print(f"seed {seed_cfg.train.seed} ({index}/{count}): {state} {run_dir}", flush=True)
        if state != "up to date":
            train(seed_cfg, resume=state == "resume", overwrite=state == "train" and run_dir.exists())
        runs.append(run_dir)
    summary = summarize([str(r) for r in runs])
    write_json(group / GROUP_FILE, summary)
    print(group_table(summary))
    return group


def headline_metrics(split_metrics: dict) -> dict[str, float]:
    return {k: float(split_metrics[k]) for k in HEADLINE if isinstance(split_metrics.get(k), (int, float))}


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summarize(run_dirs: list[str]) -> dict:
    """Per split and metric: the values of every run, their mean and sample std."""
    per_run = {d: json.loads((Path(d) / "metrics.json").read_text(encoding="utf-8")) for d in run_dirs}
    out = {"runs": run_dirs, "seeds": [], "metrics": {}}
    out["seeds"] = [_manifest(d)["config"]["train"]["seed"] for d in run_dirs]
    for split in ("dev", "test"):
        names = headline_metrics(next(iter(per_run.values()))[split])
        out["metrics"][split] = {name: mean_std([headline_metrics(m[split])[name] for m in per_run.values()])
                                 for name in names}
    return out


def _manifest(run_dir: str) -> dict:
    import yaml

    return yaml.safe_load((Path(run_dir) / "toolchain.yaml").read_text(encoding="utf-8"))


def group_table(summary: dict) -> str:
    from toolchain.train.report import format_table

    rows = [[split, name, f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}",
             "  ".join(f"{100 * v:.2f}" for v in s["values"])]
            for split, metrics in summary["metrics"].items() for name, s in metrics.items()]
    return format_table(["split", "metric", f"mean ± std ({len(summary['runs'])} seeds)", "per seed"], rows)


def is_group(path: str | Path) -> bool:
    return (Path(path) / GROUP_FILE).is_file()


def load_group(path: str | Path) -> dict:
    if not is_group(path):
        raise ArtifactError(f"{path}: not a seed group (no {GROUP_FILE}; train one with --seeds N)")
    return json.loads((Path(path) / GROUP_FILE).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- predictions and significance

def write_test_predictions(run_dir: Path, task_name: str, logits, label_ids, labels: list[str], test_sha256: str | None):
    """Gold and predicted labels per test item (tags per item for NER), for paired comparisons."""
    if task_name == "token-classification":
        from toolchain.tasks.token_classification import tag_sequences

        gold, predicted = tag_sequences(logits, label_ids, labels)
    else:
        predicted_ids = np.asarray(logits).argmax(axis=-1)
        gold = [labels[int(i)] for i in np.asarray(label_ids)]
        predicted = [labels[int(i)] for i in predicted_ids]
    write_json(run_dir / PREDICTIONS_FILE, {"task": task_name, "test_sha256": test_sha256, "gold": gold,
                                            "predicted": predicted})


def item_scores(run_dirs: list[str]) -> tuple[str, np.ndarray, str]:
    """(metric, items x runs array of per-item scores, test sha256) from the runs' test predictions."""
    loaded = []
    for d in run_dirs:
        path = Path(d) / PREDICTIONS_FILE
        if not path.is_file():
            raise ArtifactError(f"{d}: no {PREDICTIONS_FILE} (trained before it was written); train it again")
        loaded.append(json.loads(path.read_text(encoding="utf-8")))
    digests = {p["test_sha256"] for p in loaded}
    if len(digests) != 1 or len({len(p["gold"]) for p in loaded}) != 1:
        raise ArtifactError(f"{', '.join(run_dirs)}: the runs were tested on different test sets")
    if loaded[0]["task"] == "token-classification":
        return "f1", np.stack([entity_counts(p["gold"], p["predicted"]) for p in loaded], axis=1), digests.pop()
    correct = [[g == q for g, q in zip(p["gold"], p["predicted"])] for p in loaded]
    return "accuracy", np.asarray(correct, dtype=float).T, digests.pop()


def entity_counts(gold: list[list[str]], predicted: list[list[str]]) -> np.ndarray:
    """Per item (true positives, predicted entities, gold entities), for a resampled micro F1."""
    from seqeval.metrics.sequence_labeling import get_entities

    from toolchain.tasks.token_classification import io_to_iob2

    rows = []
    for g, p in zip(gold, predicted):
        g_set, p_set = set(get_entities(g)), set(get_entities(io_to_iob2(p)))
        rows.append((len(g_set & p_set), len(p_set), len(g_set)))
    return np.asarray(rows, dtype=float)


def group_score(metric: str, scores: np.ndarray) -> float:
    """The group's metric on items ``scores`` (mean over its runs)."""
    if metric == "accuracy":
        return float(scores.mean())
    tp, predicted, gold = scores.sum(axis=0).T      # (items, runs, 3) -> per run
    f1s = 2 * tp / np.maximum(predicted + gold, 1e-12)
    return float(np.mean(f1s))


def paired_bootstrap(a_runs: list[str], b_runs: list[str], resamples: int = 10000, seed: int = 0) -> dict:
    """Difference b - a of the seed-averaged metric, its 95% interval and two-sided p over resampled items."""
    metric, a, digest_a = item_scores(a_runs)
    _, b, digest_b = item_scores(b_runs)
    if digest_a != digest_b or len(a) != len(b):
        raise ArtifactError("the two groups were tested on different test sets: no paired comparison")
    observed = group_score(metric, b) - group_score(metric, a)
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for k in range(resamples):
        idx = rng.integers(0, len(a), len(a))
        diffs[k] = group_score(metric, b[idx]) - group_score(metric, a[idx])
    low, high = np.percentile(diffs, [2.5, 97.5])
    p = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return {"metric": metric, "difference": observed, "ci95": [float(low), float(high)], "p_value": p,
            "items": int(len(a)), "resamples": resamples}


def compare_groups(groups: list[str], split: str = "test") -> str:
    """Mean ± std per metric of each seed group, and the paired bootstrap of each group against the first."""
    from toolchain.train.report import format_table

    summaries = [load_group(g) for g in groups]
    names = [n for n in HEADLINE if n in summaries[0]["metrics"][split]]
    rows = [[Path(g).name, len(s["runs"]), *(f"{100 * s['metrics'][split][n]['mean']:.2f} ± "
                                            f"{100 * s['metrics'][split][n]['std']:.2f}"
                                            if n in s["metrics"][split] else "-" for n in names)]
            for g, s in zip(groups, summaries)]
    text = format_table(["group", "seeds", *names], rows)
    if split != "test" or len(groups) < 2:
        return text
    lines = []
    for g, s in zip(groups[1:], summaries[1:]):
        result = paired_bootstrap(summaries[0]["runs"], s["runs"])
        low, high = result["ci95"]
        lines.append(f"  {Path(g).name} - {Path(groups[0]).name}: {result['metric']} {100 * result['difference']:+.2f} "
                     f"points, 95% CI [{100 * low:+.2f}, {100 * high:+.2f}], p = {result['p_value']:.3f} "
                     f"({result['items']} test items, {result['resamples']} resamples)")
    return text + "\npaired bootstrap on the same test items (seed-averaged):\n" + "\n".join(lines)
