"""`POST /explain`: which words drove the served model's prediction (request, explanation, response).

Request: ``{"texts": ["...", ...], "target": "negative", "source": "AAPL"}`` (``target`` optional: the class
to explain, default the predicted one; ``source`` as for ``/classify``). At most MAX_TEXTS texts. Response:
one explanation per text, in input order::

    [{"label": "negative", "score": 0.96, "scores": {...}, "target": "negative", "target_score": 0.96,
      "method": "occlusion", "unit": "probability", "variant": "int8", "truncated": false,
      "words": [{"word": "fell", "start": 6, "end": 10, "attribution": 0.41}, ...]}]

The method is leave-one-word-out occlusion (:mod:`toolchain.explain.occlusion`) on the served variant
through the serving runtime: ``label``/``scores`` are what ``/classify`` answers for the text, and a word's
``attribution`` is ``target_score`` minus the served model's probability of the target without that word.
Explanations are not predictions: they are not counted in ``toolchain_predictions_total`` (an analyst
explaining an alert's headline must not add to the sentiment the alert watches).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from toolchain.serve.validation import (SOURCE_FIELDS, Limits, check_fields, check_source, check_texts,
                                        decode_json_object, invalid, preview)
from toolchain.tasks.joint import TOPIC_PREFIX

ROUTE = "/explain"
TASK = "sequence-classification"
MAX_TEXTS = 16          # each text costs one model row per word: a tighter cap than TOOLCHAIN_MAX_BATCH_ITEMS
CONCURRENCY_SETTING = "explain_concurrency"   # the ServeSettings field capping this route per worker


class WordAttribution(BaseModel):
    word: str
    start: int
    end: int
    attribution: float


class Explanation(BaseModel):
    label: str
    score: float
    scores: dict[str, float]
    target: str
    target_score: float
    method: str
    unit: str
    variant: str
    truncated: bool
    words: list[WordAttribution]


@dataclass
class ExplainRequest:
    texts: list[str]
    target: str | None
    source: str | None


def parse_request(body: bytes, limits: Limits, labels: list[str] | None = None) -> ExplainRequest:
    """The validated request (``target`` checked against ``labels`` once the model has loaded); raises
    RequestRejected (4xx) naming the bad field and value."""
    data = decode_json_object(body)
    check_fields(data, required=("texts",), optional=("target", *SOURCE_FIELDS))
    texts = check_texts(data["texts"], Limits(min(MAX_TEXTS, limits.max_items), limits.max_chars))
    return ExplainRequest(texts, check_target(data.get("target"), labels), check_source(data))


def check_target(value, labels: list[str] | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"target must be a label (a string), got {type(value).__name__} {preview(value)}", "target")
    if labels is not None and value not in labels and TOPIC_PREFIX + value not in labels:
        raise invalid(f"target {preview(value)} is not a label of the served model; labels: {', '.join(labels)}",
                      "target")
    return value


def explain(model, texts: list[str], target: str | None = None) -> list[Explanation]:
    """Occlusion explanations of ``texts`` on the served model (an OnnxModel)."""
    from toolchain.explain.occlusion import explain_text

    return [response_item(explain_text(model, text, target)) for text in texts]


def response_item(e) -> Explanation:
    return Explanation(label=e.label, score=e.scores[e.label], scores=e.scores, target=e.target,
                       target_score=e.probability, method=e.method, unit=e.unit, variant=e.details["variant"],
                       truncated=e.truncated,
                       words=[WordAttribution(word=w.word, start=w.start, end=w.end, attribution=w.attribution)
                              for w in e.words])


def no_predictions(response: list) -> list[str]:
    """Explanations are not counted as predictions (see the module docstring)."""
    return []


def parser(labels: Callable[[], list[str] | None]) -> Callable[[bytes, Limits], ExplainRequest]:
    """``parse_request`` for admission control, checking ``target`` against the served model's labels (``labels()``:
    None until the model has loaded)."""
    return lambda body, limits: parse_request(body, limits, labels())
