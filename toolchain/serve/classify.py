"""`POST /classify`: the sequence-classification part of the service (request, post-processing, response).

Request: ``{"texts": ["...", ...], "source": "AAPL"}`` (``source`` optional: a ticker, desk or publisher,
used only as a metric label; ``topic`` is its former name, still accepted). Response: one prediction per
text, in input order::

    [{"label": "positive", "score": 0.97, "scores": {"negative": 0.01, "neutral": 0.02, "positive": 0.97},
      "truncated": false, "topic": {"label": "Earnings", "score": 0.93}}]

``topic`` is there when the model has a topic head (:mod:`toolchain.tasks.joint`): the same model call
gives both; each head's scores are a softmax over its own classes. A deployment of two single-task models
(a sentiment export and a topic export, :class:`toolchain.inference.runtime.TopicPair`) gives the same
response: the pair's output has the joint model's layout, the main model's logits then the topic model's.

:mod:`toolchain.serve.ner` is the token-classification route with the same parts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, model_serializer

from toolchain.serve.metrics import NO_PREDICTED_TOPIC
from toolchain.serve.validation import SOURCE_FIELDS, Limits, check_fields, check_source, check_texts, decode_json_object
from toolchain.core.probability import softmax
from toolchain.tasks.joint import has_topic_head, heads_of, main_head_probabilities

ROUTE = "/classify"
TASK = "sequence-classification"


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


@dataclass
class ClassifyRequest:
    texts: list[str]
    source: str | None


def parse_request(body: bytes, limits: Limits) -> ClassifyRequest:
    """The validated request; raises RequestRejected (4xx) naming the bad field and value."""
    data = decode_json_object(body)
    check_fields(data, required=("texts",), optional=SOURCE_FIELDS)
    return ClassifyRequest(check_texts(data["texts"], limits), check_source(data))


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


def infer(model, texts: list[str]):
    """The model's logits per text (truncated to its max length): ``OnnxModel.infer`` (or ``TopicPair.infer``)."""
    return model.infer(texts)


def results(texts: list[str], logits: list[np.ndarray], encodings: list, labels: list[str],
            truncated: list[bool]) -> list[Prediction]:
    """The route's response for a model output (texts and encodings are not needed here)."""
    if has_topic_head(labels):
        return joint_predictions(np.stack(logits), labels, truncated)
    return predictions(np.stack(logits), labels, truncated)


def scores(result: list[Prediction]) -> list[float]:
    return [p.score for p in result]


def predicted_labels(response: list) -> list[tuple[str, str]]:
    """(label, predicted topic) per prediction in a /classify response body (for the predictions counter);
    the topic is ``none`` for a model without a topic head."""
    return [(item["label"], (item.get("topic") or {}).get("label", NO_PREDICTED_TOPIC)) for item in response
            if isinstance(item, dict) and "label" in item]
