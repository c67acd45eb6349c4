"""The export's accuracy gate: logit parity of the exported graphs, and the test-metric check of every candidate
serving variant (config section ``accuracy_gate``; ``gate`` is its deprecated former name).

The accuracy gate compares a variant's test metric with fp32 PyTorch's on the *same* items, so it is
paired: only the items where the two disagree carry information. A variant fails when

- its metric is lower by more than ``accuracy_gate.max_drop`` points (a large drop fails whatever the test
  set's size), or
- it is worse with statistical significance at level ``accuracy_gate.alpha`` (one-sided): for accuracy the
  exact McNemar test on the discordant items (fp32 right / variant wrong vs the reverse); for any
  other metric a paired bootstrap of the drop over the test items.

Raw label agreement is reported beside it (and can still be required with ``accuracy_gate.min_agreement``),
but it is not a sound criterion on a small test set: a variant that changes 3 of 240 labels, 2 of
them for the better, agrees 98.75% and is as accurate as fp32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolchain.core.errors import CheckFailed


class AccuracyGateError(CheckFailed, RuntimeError):
    """A variant failed the accuracy gate (logit parity or test metric); the message names the variant and the
    margin (exit 1)."""


GateError = AccuracyGateError   # the former name, still importable


def check_parity(name: str, diff: float, atol: float, what: str) -> None:
    if not diff < atol:
        raise AccuracyGateError(f"variant {name!r}: {what} max abs logit difference {diff:.3g} is over the tolerance "
                                f"{atol:g} (accuracy_gate.parity_atol); the exported graph does not match the PyTorch "
                                "model")


# ---------------------------------------------------------------------- paired units

@dataclass
class PairedUnits:
    """Per-item statistics of a reference and a candidate model, from which any resample's metric follows.

    ``kind`` is ``classification`` (``gold``, ``reference``, ``candidate`` are label ids per item) or
    ``entities`` (``reference``/``candidate`` are per-row (true positives, predicted, gold) entity counts
    per entity type, shape (rows, types, 3)).
    """
    kind: str
    gold: np.ndarray | None
    reference: np.ndarray
    candidate: np.ndarray
    classes: int = 0

    @property
    def size(self) -> int:
        return len(self.reference)

    def metric(self, name: str, which: str, idx: np.ndarray | None = None) -> float:
        values = getattr(self, which)
        idx = np.arange(self.size) if idx is None else idx
        if self.kind == "classification":
            return classification_metric(name, self.gold[idx], values[idx], self.classes)
        return entity_metric(name, values[idx])


def classification_metric(name: str, gold: np.ndarray, pred: np.ndarray, classes: int) -> float:
    if name == "accuracy":
        return float(np.mean(gold == pred)) if len(gold) else 0.0
    confusion = np.bincount(gold * classes + pred, minlength=classes * classes).reshape(classes, classes)
    tp = np.diag(confusion).astype(float)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    if name == "macro_f1":
        return float(f1.mean())
    if name == "weighted_f1":
        return float(np.average(f1, weights=support)) if support.sum() else 0.0
    raise KeyError(name)


def entity_metric(name: str, counts: np.ndarray) -> float:
    """seqeval's micro/macro entity scores from per-row (tp, predicted, gold) counts per type."""
    per_type = counts.sum(axis=0).astype(float)          # (types, 3)
    tp, predicted, gold = per_type[:, 0], per_type[:, 1], per_type[:, 2]
    if name in ("f1", "precision", "recall"):
        tp, predicted, gold = tp.sum(), predicted.sum(), gold.sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / gold if gold else 0.0
        if name == "precision":
            return float(precision)
        if name == "recall":
            return float(recall)
        return float(2 * tp / (predicted + gold)) if predicted + gold else 0.0
    if name == "macro_f1":
        denominator = predicted + gold
        f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
        return float(f1[gold > 0].mean()) if (gold > 0).any() else 0.0
    raise KeyError(name)


def paired_units(task, reference_logits: np.ndarray, candidate_logits: np.ndarray, gold: np.ndarray,
                 labels: list[str]) -> PairedUnits:
    """The paired per-item statistics of a task (sequence or token classification)."""
    if gold.ndim == 1:
        return PairedUnits("classification", gold.astype(np.int64), task.predictions(reference_logits),
                           task.predictions(candidate_logits), len(labels))
    from toolchain.tasks.token_classification import entity_counts, tag_sequences

    types = sorted({label[2:] for label in labels if label[:2] in ("B-", "I-")})
    gold_tags, reference_tags = tag_sequences(reference_logits, gold, labels)
    _, candidate_tags = tag_sequences(candidate_logits, gold, labels)
    return PairedUnits("entities", None, entity_counts(gold_tags, reference_tags, types),
                       entity_counts(gold_tags, candidate_tags, types))


# ---------------------------------------------------------------------- the paired tests

def mcnemar_worse(units: PairedUnits) -> dict:
    """Exact one-sided McNemar: P(at least b of the b + c discordant items go against the candidate)."""
    from scipy.stats import binom

    ref_right = units.reference == units.gold
    cand_right = units.candidate == units.gold
    b = int(np.sum(ref_right & ~cand_right))     # fp32 right, candidate wrong
    c = int(np.sum(~ref_right & cand_right))     # candidate right, fp32 wrong
    p = float(binom.sf(b - 1, b + c, 0.5)) if b + c else 1.0
    return {"test": "exact McNemar (one-sided)", "p_value": p, "reference_only_right": b,
            "candidate_only_right": c}


def bootstrap_worse(units: PairedUnits, metric: str, resamples: int, seed: int) -> dict:
    """Paired bootstrap of the drop: share of resamples where the candidate is not worse, and a 95% interval."""
    from toolchain.core.significance import interval95, paired_bootstrap

    drops = paired_bootstrap(lambda idx: units.metric(metric, "reference", idx) - units.metric(metric, "candidate", idx),
                             units.size, resamples, seed)
    low, high = interval95(drops)
    return {"test": f"paired bootstrap ({resamples} resamples, one-sided)", "p_value": float(np.mean(drops <= 0)),
            "drop_interval_points": [100 * low, 100 * high]}


@dataclass(frozen=True)
class AccuracyGateCriteria:
    metric: str
    max_drop: float          # points
    alpha: float             # 0 = no significance test
    min_agreement: float     # 0 = not required
    resamples: int = 2000
    seed: int = 0


def judge(name: str, units: PairedUnits, agreement: float, criteria: AccuracyGateCriteria) -> dict:
    """The accuracy gate's verdict on one variant: figures, whether it passed, and why not."""
    metric = criteria.metric
    reference, value = units.metric(metric, "reference"), units.metric(metric, "candidate")
    drop = 100.0 * (reference - value)
    if units.kind == "classification" and metric == "accuracy":
        test = mcnemar_worse(units)
    else:
        test = bootstrap_worse(units, metric, criteria.resamples, criteria.seed)
    problems = []
    if drop > criteria.max_drop:
        problems.append(f"test {metric} {value:.4f} vs fp32 PyTorch {reference:.4f}, a drop of {drop:.2f} points "
                        f"(allowed {criteria.max_drop:g}, accuracy_gate.max_drop)")
    if criteria.alpha > 0 and drop > 0 and test["p_value"] < criteria.alpha:
        problems.append(f"significantly worse than fp32 PyTorch on test ({test['test']}: p = {test['p_value']:.3g} "
                        f"< accuracy_gate.alpha = {criteria.alpha:g})")
    if agreement < criteria.min_agreement:
        problems.append(f"label agreement with fp32 PyTorch on test is {agreement:.2%}, below "
                        f"{criteria.min_agreement:.2%} (accuracy_gate.min_agreement)")
    return {"variant": name, "metric": metric, "reference": reference, "value": value, "drop_points": drop,
            "max_drop_points": criteria.max_drop, "alpha": criteria.alpha, **test, "agreement": agreement,
            "min_agreement": criteria.min_agreement, "items": units.size, "passed": not problems,
            "problems": problems}


def judge_variant(name: str, task, reference_logits: np.ndarray, candidate_logits: np.ndarray, gold: np.ndarray,
                  labels: list[str], agreement: float, criteria: AccuracyGateCriteria) -> dict:
    """The verdict on one variant; a model with a topic head is judged per head, on each head's own test
    items and classes, and passes only when every head passes (the figures shown are the worst head's)."""
    heads = getattr(task, "heads", None)
    if not heads:
        return judge(name, paired_units(task, reference_logits, candidate_logits, gold, labels), agreement, criteria)
    from toolchain.tasks.joint import head_rows

    verdicts = {}
    for head in heads:
        rows = head_rows(gold, head)
        units = PairedUnits("classification", gold[rows].astype(np.int64) - head.start,
                            head.columns(reference_logits[rows]).argmax(axis=-1),
                            head.columns(candidate_logits[rows]).argmax(axis=-1), len(head.labels))
        verdicts[head.name] = judge(name, units, float(np.mean(units.reference == units.candidate)), criteria)
    worst = max(verdicts.values(), key=lambda verdict: verdict["drop_points"])
    return {**worst, "variant": name, "passed": all(v["passed"] for v in verdicts.values()),
            "problems": [f"{head} head: {problem}" for head, v in verdicts.items() for problem in v["problems"]],
            "heads": verdicts}


def accuracy_gate_error(verdict: dict) -> AccuracyGateError:
    return AccuracyGateError(f"serve variant {verdict['variant']!r} failed the accuracy gate: "
                             + "; ".join(verdict["problems"]))


def closest_failure(verdicts: dict[str, dict]) -> str:
    """The failed variant nearest to passing (smallest drop), and what would let a variant through."""
    name, verdict = min(verdicts.items(), key=lambda kv: kv[1]["drop_points"])
    return (f"no variant passed the accuracy gate; the closest is {name!r}: " + "; ".join(verdict["problems"])
            + ". Check the run (fp32 ONNX should match PyTorch), or loosen the gate "
            f"(export.accuracy_gate.max_drop={max(1.0, round(verdict['drop_points'] + 0.5, 1))}, "
            "export.accuracy_gate.alpha=0), "
            "or pin a variant with export.serve_variant=NAME")
