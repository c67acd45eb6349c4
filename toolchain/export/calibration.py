"""Temperature scaling: one scalar T per head, fitted on dev, so that softmax(logits / T) are calibrated.

Guo et al. (2017): a fine-tuned network is over-confident; dividing its logits by a single T > 1
fitted to minimise the dev negative log-likelihood fixes most of it without changing any argmax
(accuracy is untouched). The export fits T for every variant on that variant's own dev logits (int8
logits differ from fp32 ones), reports the expected calibration error (ECE, 15 equal-width confidence
bins) on test before and after, and stores T in the export's ``toolchain.yaml``; the service divides
by it before its softmax, so the scores it returns are calibrated probabilities.
"""
from __future__ import annotations

import numpy as np

from toolchain.core.probability import softmax
from toolchain.tasks.joint import head_columns

BINS = 15
T_RANGE = (0.05, 20.0)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


OBJECTIVES = ("ece", "nll")
ECE_GRID = 400   # log-spaced temperatures over T_RANGE searched by the ece objective


def fit_temperature(logits: np.ndarray, labels: np.ndarray, objective: str = "nll") -> float:
    """The T minimising dev NLL (golden-section search on log T: NLL is unimodal in T), or with
    ``objective="ece"`` the T minimising dev ECE over a log-spaced grid (ECE is a step function of T; among
    equal ECEs the lowest NLL wins)."""
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        raise ValueError("temperature scaling needs labelled dev items; the dev split is empty")
    if objective not in OBJECTIVES:
        raise ValueError(f"calibration objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    if objective == "ece":
        grid = np.exp(np.linspace(np.log(T_RANGE[0]), np.log(T_RANGE[1]), ECE_GRID))
        errors = np.array([expected_calibration_error(softmax(logits, t), labels) for t in grid])
        best = grid[errors <= errors.min() + 1e-12]
        return float(min(best, key=lambda t: nll(logits, labels, t)))
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """sum over confidence bins of |accuracy - mean confidence| weighted by the bin's share of items."""
    probs, labels = np.asarray(probs), np.asarray(labels, dtype=int)
    confidence, predicted = probs.max(axis=-1), probs.argmax(axis=-1)
    correct = (predicted == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for k in range(bins):
        member = index == k
        if member.any():
            total += member.mean() * abs(correct[member].mean() - confidence[member].mean())
    return float(total)


def calibration_report(dev_logits, dev_labels, test_logits, test_labels, objective: str = "nll") -> dict:
    """T fitted on dev (minimising ``objective``); test ECE and NLL before (T = 1) and after."""
    t = fit_temperature(dev_logits, dev_labels, objective)
    return {
        "temperature": round(t, 6), "objective": objective,
        "test_ece_before": expected_calibration_error(softmax(test_logits), test_labels),
        "test_ece_after": expected_calibration_error(softmax(test_logits, t), test_labels),
        "test_nll_before": nll(test_logits, np.asarray(test_labels, dtype=int), 1.0),
        "test_nll_after": nll(test_logits, np.asarray(test_labels, dtype=int), t),
        "dev_items": int(len(dev_labels)), "test_items": int(len(test_labels)), "bins": BINS,
    }


def head_items(logits: np.ndarray, gold: np.ndarray, columns: slice) -> tuple[np.ndarray, np.ndarray]:
    """The rows labelled in this head, its columns, and the gold ids within it."""
    rows = (gold >= columns.start) & (gold < columns.stop)
    return logits[rows][:, columns], gold[rows] - columns.start


def calibrate_logits(labels: list[str], dev: tuple, test: tuple, objective: str = "nll") -> dict:
    """Per head: the calibration report of (dev logits, dev gold) and (test logits, test gold)."""
    out = {}
    for head, columns in head_columns(labels).items():
        dev_logits, dev_gold = head_items(np.asarray(dev[0]), np.asarray(dev[1]), columns)
        test_logits, test_gold = head_items(np.asarray(test[0]), np.asarray(test[1]), columns)
        out[head] = calibration_report(dev_logits, dev_gold, test_logits, test_gold, objective)
    return out


def temperatures(calibration: dict) -> dict:
    """{variant: {head: T}} for the export manifest (what the service applies)."""
    return {variant: {head: r["temperature"] for head, r in heads.items()} for variant, heads in calibration.items()}
