"""A classifier's answer for a model output: label, its score, every class score, and the topic.

This is what ``POST /classify`` returns (:mod:`toolchain.serve.classify` answers with these) and what
``toolchain predict`` writes, so both give a text the same answer from the same runtime output
(:class:`toolchain.inference.runtime.OnnxModel` or ``TopicPair``)::

    {"label": "positive", "score": 0.97, "scores": {"negative": 0.01, "neutral": 0.02, "positive": 0.97},
     "truncated": false, "topic": {"label": "Earnings", "score": 0.93}}

``topic`` is there when the model has a topic head (:mod:`toolchain.tasks.joint`), or for two single-task
models served together (their output has the joint model's layout); each head's scores are a softmax over
its own classes.
"""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, model_serializer

from toolchain.core.probability import softmax
from toolchain.tasks.joint import has_topic_head, heads_of, main_head_probabilities


class TopicPrediction(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]
    truncated: bool
    topic: TopicPrediction | None = None

    @model_serializer(mode="wrap")
    def _without_absent_topic(self, handler):
        data = handler(self)
        if data.get("topic") is None:
            data.pop("topic", None)
        return data


def predictions(logits: np.ndarray, labels: list[str], truncated: list[bool]) -> list[Prediction]:
    """Label, its probability and every class probability per row of (main-head) logits."""
    probs = main_head_probabilities(logits, labels)
    best = probs.argmax(axis=-1)
    return [Prediction(label=labels[k], score=float(row[k]), scores=dict(zip(labels, map(float, row))),
                       truncated=cut)
            for row, k, cut in zip(probs, best, truncated)]


def with_topics(out: list[Prediction], topic_logits: np.ndarray, topic_labels: list[str]) -> list[Prediction]:
    """Each prediction with the topic of its row of ``topic_logits``: the most likely topic and its probability
    (a softmax over the topic classes only)."""
    probs = softmax(topic_logits)
    for prediction, row in zip(out, probs):
        best = int(row.argmax())
        prediction.topic = TopicPrediction(label=topic_labels[best], score=float(row[best]))
    return out


def joint_predictions(logits: np.ndarray, labels: list[str], truncated: list[bool]) -> list[Prediction]:
    """Main-head prediction (label, score, scores) plus the topic head's label and score, per row."""
    main, topic = heads_of(labels)
    return with_topics(predictions(main.columns(logits), list(main.labels), truncated), topic.columns(logits),
                       list(topic.labels))


def results(texts: list[str], logits: list[np.ndarray], encodings: list, labels: list[str],
            truncated: list[bool]) -> list[Prediction]:
    """The answer for a model output (the route's signature: texts and encodings are not needed here)."""
    if has_topic_head(labels):
        return joint_predictions(np.stack(logits), labels, truncated)
    return predictions(np.stack(logits), labels, truncated)


def main_labels(labels: list[str]) -> list[str]:
    """The classes ``scores`` holds: the main head's (all of them for a single-task model)."""
    return list(heads_of(labels)[0].labels) if has_topic_head(labels) else list(labels)
