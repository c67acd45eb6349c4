"""`POST /ner`: the token-classification part of the service (request, post-processing, response).

Request: ``{"texts": ["...", ...], "source": "AAPL"}`` as for ``/classify``. Response: one result per
text, in input order, with the entities found and their character offsets in the text as sent::

    [{"entities": [{"type": "ORG", "text": "Goldman Sachs", "start": 0, "end": 13, "score": 0.98}],
      "truncated": false}]

``text[start:end] == entity["text"]`` always holds. Words are found the way the training data
(CoNLL-style, one token per line) splits them: punctuation stands alone, except in abbreviations
(``U.S.``, ``Inc.``, ``Mr.``), numbers (``3.5``, ``1,200``) and joined names (``AT&T``, ``Rolls-Royce``, ``O'Neill``); a
possessive ``'s`` is its own word. Each word takes the prediction of its first sub-token, as in training.

A text longer than the model's max length is not truncated: it is run in the sliding windows training and
evaluation use (:mod:`toolchain.serve.windows`), every word scored once, so ``truncated`` is always false.
"""
from __future__ import annotations


import numpy as np
from pydantic import BaseModel

from toolchain.serve.classify import parse_request  # noqa: F401  (the same request shape as /classify)
from toolchain.serve.metrics import NO_PREDICTED_TOPIC
from toolchain.data.words import token_words
from toolchain.serve.windows import infer_windows
from toolchain.tasks.token_classification import decode_entities

ROUTE = "/ner"
TASK = "token-classification"


class Entity(BaseModel):
    type: str
    text: str
    start: int
    end: int
    score: float


class NerResult(BaseModel):
    entities: list[Entity]
    truncated: bool


def infer(model, texts: list[str]):
    """The model's per-token logits for whole texts, long ones in the training windows (a BatchOutput)."""
    return infer_windows(model, texts, token_words)


def results(texts: list[str], logits: list[np.ndarray], encodings: list, labels: list[str],
            truncated: list[bool]) -> list[NerResult]:
    """Entities per text from the model's per-token logits and the tokenizer's encodings."""
    out = []
    for text, rows, encoding, cut in zip(texts, logits, encodings, truncated):
        offsets = encoding.offsets
        found = decode_entities(text, offsets, rows[:len(offsets)], labels, token_words(text, offsets))
        out.append(NerResult(entities=[Entity(**entity) for entity in found], truncated=cut))
    return out


def scores(predictions: list[NerResult]) -> list[float]:
    return [entity.score for result in predictions for entity in result.entities]


def result_labels(result: list[NerResult]) -> list[tuple[str, str]]:
    """(entity type, ``none``) per entity of an answer (for the predictions counter)."""
    return [(entity.type, NO_PREDICTED_TOPIC) for item in result for entity in item.entities]


def entity_types(response: list) -> list[tuple[str, str]]:
    """(entity type, ``none``) per entity in a /ner response body (for the predictions counter: an NER model
    predicts no topic)."""
    return [(entity["type"], NO_PREDICTED_TOPIC) for item in response if isinstance(item, dict)
            for entity in item.get("entities", []) if isinstance(entity, dict) and "type" in entity]
