"""Two classification heads on one encoder: the main head (e.g. sentiment) and a topic head.

The heads share the encoder and the pooled output; their classes are laid side by side in one output
layer, the main head's first and the topic head's after it. One output layer of ``m + t`` classes is the
same arithmetic as two layers of ``m`` and ``t`` on the same pooled vector, so the model stays a standard
``*ForSequenceClassification`` that Optimum exports, quantizes and serves unchanged, and one model call
gives both answers. Topic classes carry the prefix ``topic:`` in the run's label list; each training
example is labelled in one head only, and its loss is the cross-entropy over that head's classes (the
other head's logits are masked out), so each head is a proper softmax over its own classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from toolchain.tasks.classification import SequenceClassification, classification_metrics

TOPIC_PREFIX = "topic:"
MAIN, TOPIC = "main", "topic"


@dataclass(frozen=True)
class Head:
    name: str
    labels: tuple[str, ...]   # class names as shown to users (topic names without the prefix)
    start: int                # first column of this head in the model's output

    @property
    def stop(self) -> int:
        return self.start + len(self.labels)

    def columns(self, logits: np.ndarray) -> np.ndarray:
        return logits[..., self.start:self.stop]


def has_topic_head(labels: list[str]) -> bool:
    return any(label.startswith(TOPIC_PREFIX) for label in labels)


@lru_cache(maxsize=16)
def _heads(labels: tuple[str, ...]) -> tuple[Head, Head]:
    main = [label for label in labels if not label.startswith(TOPIC_PREFIX)]
    topic = [label[len(TOPIC_PREFIX):] for label in labels if label.startswith(TOPIC_PREFIX)]
    if list(labels) != main + [TOPIC_PREFIX + t for t in topic]:
        raise ValueError(f"label list {list(labels)} does not hold the main classes first and the "
                         f"{TOPIC_PREFIX!r} classes after them")
    return Head(MAIN, tuple(main), 0), Head(TOPIC, tuple(topic), len(main))


def heads_of(labels: list[str]) -> tuple[Head, Head]:
    """(main head, topic head) of a joint model's label list (see the module docstring)."""
    return _heads(tuple(labels))


def joint_labels(main_labels: list[str], topic_labels: list[str]) -> list[str]:
    return list(main_labels) + [TOPIC_PREFIX + t for t in topic_labels]


def head_rows(label_ids: np.ndarray, head: Head) -> np.ndarray:
    """Rows whose gold label belongs to ``head`` (every example is labelled in exactly one head)."""
    ids = np.asarray(label_ids)
    return (ids >= head.start) & (ids < head.stop)


HEADLINE = ("accuracy", "macro_f1", "weighted_f1")


class JointClassification(SequenceClassification):
    """Sequence classification with a main head and a topic head (one output layer, two softmaxes)."""

    def __init__(self, labels: list[str]):
        self.heads = heads_of(labels)

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        """(rows, 2): each head's predicted class (index within the head) for every row."""
        logits = np.asarray(logits)
        return np.stack([head.columns(logits).argmax(axis=-1) for head in self.heads], axis=-1)

    def metrics(self, logits, label_ids, labels):
        """Per head: its classification metrics on the rows labelled in it; top level: their means."""
        logits, label_ids = np.asarray(logits), np.asarray(label_ids)
        heads = {}
        for head in self.heads:
            rows = head_rows(label_ids, head)
            if rows.any():
                pred = head.columns(logits[rows]).argmax(axis=-1)
                heads[head.name] = classification_metrics(label_ids[rows] - head.start, pred, list(head.labels))
        out = {key: float(np.mean([m[key] for m in heads.values()])) for key in HEADLINE} if heads else {}
        return {**out, "examples": int(len(label_ids)), "heads": heads}

    def summary(self, metrics):
        """Mean accuracy and macro-F1 over the heads (what picks the best checkpoint), then each head's."""
        out = {k: metrics[k] for k in ("accuracy", "macro_f1") if k in metrics}
        for name, head in metrics.get("heads", {}).items():
            out.update({f"{name}_{k}": head[k] for k in HEADLINE})
        return out


def head_metric_summary(metrics: dict) -> dict:
    """{head: {accuracy, macro_f1, weighted_f1}} of a joint metrics dict (empty for single-task)."""
    return {name: {k: m[k] for k in HEADLINE} for name, m in metrics.get("heads", {}).items()}


def head_columns(labels: list[str]) -> dict[str, slice]:
    """Each head's output columns: ``main`` (all of them for a single-task model), ``topic`` beside it."""
    if not has_topic_head(labels):
        return {"main": slice(0, len(labels))}
    return {head.name: slice(head.start, head.stop) for head in heads_of(labels)}


def main_head_probabilities(logits: np.ndarray, labels: list[str]) -> np.ndarray:
    """Each row's class probabilities of the main head (a softmax over its own columns), as ``/classify``
    scores them in ``scores``; the predicted label's is its ``score``."""
    from toolchain.core.probability import softmax

    logits = np.asarray(logits)
    return softmax(heads_of(labels)[0].columns(logits) if has_topic_head(labels) else logits)
