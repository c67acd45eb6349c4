"""Faithfulness checks of explanations: does deleting the words an explanation ranks highest change the
prediction more than deleting as many random words?

For one explanation of class c and its text x: top-k delta = P(c | x) - P(c | x without its k highest-scored
words), random-k delta = the same for k words drawn at random (the mean over ``draws`` draws). A faithful
explanation has a larger mean top-k delta than random-k delta over a test set. ``probabilities`` is any
function texts -> per-class probabilities (the fp32 PyTorch model, or the served ONNX variant).
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from toolchain.explain.result import Explanation, without_words


@dataclass
class DeletionDeltas:
    k: int
    top: list[float]        # per explanation scored (texts with more than k words)
    random: list[float]

    def summary(self) -> dict:
        top, rnd = np.asarray(self.top), np.asarray(self.random)
        return {"k": self.k, "texts": int(len(top)), "top_k_mean_delta": float(top.mean()),
                "random_k_mean_delta": float(rnd.mean()), "difference": float((top - rnd).mean()),
                "texts_top_k_above_random": int((top > rnd).sum()),
                "difference_95ci": bootstrap_ci(top - rnd)}


def bootstrap_ci(values: np.ndarray, rounds: int = 2000, seed: int = 0) -> list[float]:
    """A 95% percentile bootstrap interval of the mean of ``values``."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(rounds, len(values)), replace=True).mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def deletion_deltas(explanations: list[Explanation], probabilities: Callable[[list[str]], np.ndarray],
                    k: int, draws: int = 5, seed: int = 0) -> DeletionDeltas:
    """Top-k and random-k deletion deltas of the explained class's probability, per explanation."""
    rng = random.Random(seed)
    top, rnd = [], []
    for e in explanations:
        if len(e.words) <= k:
            continue
        column = list(e.scores).index(e.target)
        ranked = sorted(range(len(e.words)), key=lambda i: -e.words[i].attribution)
        picks = [ranked[:k]] + [rng.sample(range(len(e.words)), k) for _ in range(draws)]
        texts = [without_words(e.text, [(e.words[i].start, e.words[i].end) for i in pick]) for pick in picks]
        probs = probabilities(texts)[:, column]
        top.append(e.probability - float(probs[0]))
        rnd.append(e.probability - float(probs[1:].mean()))
    return DeletionDeltas(k, top, rnd)
