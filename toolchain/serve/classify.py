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

# The answer itself is built in the inference layer, so `toolchain predict` gives a text exactly what this route does.
from toolchain.inference.predictions import (Prediction, TopicPrediction, joint_predictions,  # noqa: F401
                                             predictions, results, with_topics)
from toolchain.serve.metrics import NO_PREDICTED_TOPIC
from toolchain.serve.validation import SOURCE_FIELDS, Limits, check_fields, check_source, check_texts, decode_json_object

ROUTE = "/classify"
TASK = "sequence-classification"


@dataclass
class ClassifyRequest:
    texts: list[str]
    source: str | None


def parse_request(body: bytes, limits: Limits) -> ClassifyRequest:
    """The validated request; raises RequestRejected (4xx) naming the bad field and value."""
    data = decode_json_object(body)
    check_fields(data, required=("texts",), optional=SOURCE_FIELDS)
    return ClassifyRequest(check_texts(data["texts"], limits), check_source(data))


def infer(model, texts: list[str]):
    """The model's logits per text (truncated to its max length): ``OnnxModel.infer`` (or ``TopicPair.infer``)."""
    return model.infer(texts)


def scores(result: list[Prediction]) -> list[float]:
    return [p.score for p in result]


def result_labels(result: list[Prediction]) -> list[tuple[str, str]]:
    """(label, predicted topic) per prediction of an answer (for the predictions counter), as
    :func:`predicted_labels` reads them from its JSON."""
    return [(p.label, p.topic.label if p.topic is not None else NO_PREDICTED_TOPIC) for p in result]


def predicted_labels(response: list) -> list[tuple[str, str]]:
    """(label, predicted topic) per prediction in a /classify response body (for the predictions counter);
    the topic is ``none`` for a model without a topic head."""
    return [(item["label"], (item.get("topic") or {}).get("label", NO_PREDICTED_TOPIC)) for item in response
            if isinstance(item, dict) and "label" in item]
