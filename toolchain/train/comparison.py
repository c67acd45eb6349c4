"""Every run's test predictions, and whether two seed groups really differ on the same test items.

``toolchain compare GROUP_A GROUP_B`` (seed groups) shows mean +- std per metric and a **paired
bootstrap** between the first group and each other one on the same test set: each test item's score is
averaged over the seeds of a group (correct or not for classification; the item's entities for NER),
the items are resampled with replacement, and the share of resamples whose difference has the other
sign gives a two-sided p-value, with the 95% interval of the difference. Every run keeps its test
predictions (``test_predictions.json``) for it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from toolchain.core.artifacts import ArtifactError, load_group, write_json
from toolchain.core import significance


PREDICTIONS_FILE = "test_predictions.json"


HEADLINE = ("accuracy", "macro_f1", "f1", "precision", "recall")


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
    """Per item (true positives, predicted entities, gold entities), for a resampled micro F1: strict IOB2
    entities, counted by the same counter as the export's accuracy gate."""
    from toolchain.tasks.token_classification import entity_counts as typed_counts
    from toolchain.tasks.token_classification import entity_types

    return typed_counts(gold, predicted, entity_types(gold + predicted)).sum(axis=1).astype(float)


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
    diffs = significance.paired_bootstrap(lambda idx: group_score(metric, b[idx]) - group_score(metric, a[idx]), len(a),
                             resamples, seed)
    low, high = significance.interval95(diffs)
    p = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return {"metric": metric, "difference": observed, "ci95": [float(low), float(high)], "p_value": p,
            "items": int(len(a)), "resamples": resamples}


def compare_groups(groups: list[str], split: str = "test") -> str:
    """Mean ± std per metric of each seed group, and the paired bootstrap of each group against the first."""
    from toolchain.core.report import format_table

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
