"""Leave-one-word-out occlusion on an ONNX variant, through the serving runtime (no torch).

For a text, every word the model sees (within its max length) is deleted in turn; all these texts and the
original are tokenized as the service tokenizes and run on the served variant: one model call per text for
a batch-invariant variant (fp32, optimized, static int8: padding leaves the logits bit-identical), one call
per row for a dynamically quantized one (its activation ranges depend on the call's other rows, so the
service runs it one text per call, and so does this). The original's prediction is therefore exactly the
one ``POST /classify`` answers, and a word's score is exactly

    P(target | text) - P(target | text without the word)

as the served model computes both: > 0 when the word supports the target.
"""
from __future__ import annotations

import time

import numpy as np

from toolchain.explain.result import Explanation, WordScore, check_text, choose, without_words, word_scores

METHOD = "occlusion"


def run_rows(model, encodings: list) -> tuple[np.ndarray, float]:
    """Logits of the encodings on ``model`` (an OnnxModel), called as the service calls it; and the seconds."""
    if model.per_text:
        logits, seconds = model.run_encoded(encodings)
        return np.stack(logits), seconds
    return model.run(model.encoder.pad(encodings))


def covered_words(text: str, encoding) -> list[WordScore]:
    """The words of ``text`` that the (possibly truncated) encoding holds, with zero scores."""
    words, _, _ = word_scores(text, encoding.offsets, np.zeros(len(encoding.offsets)))
    return words


def explain_text(model, text: str, target: str | None = None) -> Explanation:
    """Occlusion scores of every word the model sees, for ``target`` (default: the predicted class)."""
    if model.export is not None and model.export.task != "sequence-classification":
        raise ValueError(f"occlusion explains sequence classification; this model's task is {model.export.task}")
    check_text(text)
    started = time.perf_counter()
    encoding = model.encoder.tokenize([text])[0]
    words = covered_words(text, encoding)
    perturbed = [without_words(text, [(w.start, w.end)]) for w in words]
    encodings = [encoding, *model.encoder.tokenize(perturbed)] if perturbed else [encoding]
    logits, seconds = run_rows(model, encodings)
    pick = choose(model.labels, target, logits[0])
    probs = pick.probabilities(logits)
    for word, row in zip(words, probs[1:]):
        word.attribution = float(probs[0, pick.target] - row[pick.target])
    return Explanation(
        text=text, task="sequence-classification", method=METHOD, unit="probability",
        label=pick.labels[pick.predicted], target=pick.labels[pick.target], probability=float(probs[0, pick.target]),
        scores=dict(zip(pick.labels, map(float, probs[0]))), words=words, truncated=bool(encoding.overflowing),
        details={"variant": model.variant, "model_calls": model.call_pattern, "rows": len(encodings),
                 "model_seconds": seconds, "seconds": time.perf_counter() - started})


def explain_texts(model, texts: list[str], target: str | None = None) -> list[Explanation]:
    return [explain_text(model, text, target) for text in texts]
