"""`POST /classify`: the sequence-classification part of the service (request, post-processing, response).

Request: ``{"texts": ["...", ...], "topic": "AAPL"}`` (``topic`` optional: a ticker, desk or source,
used only as a metric label). Response: one prediction per text, in input order::

    [{"label": "positive", "score": 0.97, "scores": {"negative": 0.01, "neutral": 0.02, "positive": 0.97},
      "truncated": false}]

:mod:`toolchain.serve.ner` is the token-classification route with the same parts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from toolchain.serve.validation import Limits, check_fields, check_texts, check_topic, decode_json_object

ROUTE = "/classify"
TASK = "sequence-classification"


class Prediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]
    truncated: bool


@dataclass
class ClassifyRequest:
    texts: list[str]
    topic: str | None


def parse_request(body: bytes, limits: Limits) -> ClassifyRequest:
    """The validated request; raises RequestRejected (4xx) naming the bad field and value."""
    data = decode_json_object(body)
    check_fields(data, required=("texts",), optional=("topic",))
    return ClassifyRequest(check_texts(data["texts"], limits), check_topic(data.get("topic")))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def predictions(logits: np.ndarray, labels: list[str], truncated: list[bool]) -> list[Prediction]:
    """Label, its probability and every class probability per row of logits."""
    probs = softmax(logits)
    best = probs.argmax(axis=-1)
    return [Prediction(label=labels[k], score=float(row[k]), scores=dict(zip(labels, map(float, row))),
                       truncated=cut)
            for row, k, cut in zip(probs, best, truncated)]


def infer(model, texts: list[str]):
    """The model's logits per text (truncated to its max length): ``OnnxModel.infer``."""
    return model.infer(texts)


def results(texts: list[str], logits: list[np.ndarray], encodings: list, labels: list[str],
            truncated: list[bool]) -> list[Prediction]:
    """The route's response for a model output (texts and encodings are not needed here)."""
    return predictions(np.stack(logits), labels, truncated)


def scores(result: list[Prediction]) -> list[float]:
    return [p.score for p in result]


def predicted_labels(response: list) -> list[str]:
    """The labels in a /classify response body (for the predictions-by-topic counter)."""
    return [item["label"] for item in response if isinstance(item, dict) and "label" in item]
