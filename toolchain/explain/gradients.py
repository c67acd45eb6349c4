"""Integrated gradients on the output of the word-embedding layer the model declares (``get_input_embeddings``;
PyTorch, fp32).

The path runs from a baseline, the word embeddings of the same input with every content token replaced
by ``[PAD]`` (special tokens kept; positions, segment ids and the attention mask are the input's, so they get
no attribution), to the input's word embeddings. The path integral of the target's gradient is taken by
Gauss-Legendre quadrature on ``steps`` points (exact for polynomials of degree 2 * steps - 1, and much closer
than a Riemann sum at the same cost); a token's score is (input - baseline) . integral, summed over the hidden
size. The scores sum to F(input) - F(baseline) up to the quadrature error, which every explanation reports as its
completeness error. F is the target class's logit (sequence classification) or, for an entity, the mean over its
words' first sub-tokens of the logit of the tag predicted there.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from toolchain.explain.result import Explanation, ExplainError, check_text, choose, word_scores
from toolchain.data.words import content_offsets, token_words
from toolchain.tasks.token_classification import decode_entities

METHOD = "integrated-gradients"
BASELINE = "[PAD] word embedding for every content token (special tokens, positions and segments kept)"
DEFAULT_STEPS = 50


@dataclass(frozen=True)
class Quadrature:
    """How the path integral is taken: ``steps`` points to start with, doubled (up to ``max_steps``) until the
    scores sum to the logit change within ``rtol`` * |change| + ``atol``; ``chunk`` path points per forward."""
    steps: int = DEFAULT_STEPS
    max_steps: int = 400
    rtol: float = 0.02
    atol: float = 0.01
    chunk: int = 25

    def __post_init__(self):
        if not 1 <= self.steps <= self.max_steps:
            raise ExplainError(f"steps must be between 1 and max_steps ({self.max_steps}), got {self.steps}")
        if self.chunk < 1 or self.rtol < 0 or self.atol < 0:
            raise ExplainError(f"chunk must be >= 1 and tolerances >= 0, got chunk={self.chunk}, "
                               f"rtol={self.rtol}, atol={self.atol}")

    def allows(self, error: float, gap: float) -> bool:
        return error <= self.rtol * abs(gap) + self.atol


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in (0, 1) and their weights (summing to 1) for ``steps``-point Gauss-Legendre quadrature."""
    if steps < 1:
        raise ExplainError(f"steps must be at least 1, got {steps}")
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1) / 2, weights / 2


class EmbeddingOutput:
    """A forward hook on the embedding layer: records its output, or replaces it while ``replacement`` is set."""

    def __init__(self, module):
        self.seen: torch.Tensor | None = None
        self.replacement: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.seen = output
        return self.replacement

    def remove(self) -> None:
        self.handle.remove()


class IntegratedGradients:
    """One encoded input (batch of 1) and its baseline; ``attribute(F)`` integrates F's gradient between them."""

    def __init__(self, model, embeddings, inputs: dict[str, torch.Tensor], baseline_ids: torch.Tensor):
        self.model, self.inputs = model, inputs
        self.hook = EmbeddingOutput(embeddings)
        try:
            with torch.no_grad():
                self.logits = model(**inputs).logits
                self.point = self.hook.seen.detach()
                self.baseline = embeddings(baseline_ids).detach()
                # the baseline's logits with the input's other inputs: a model that derives positions from the
                # ids (RoBERTa, MPNet: the padding position for [PAD]) sees one set of positions along the path
                self.hook.replacement = self.baseline
                self.baseline_logits = model(**inputs).logits
                self.hook.replacement = None
        except BaseException:
            self.hook.remove()
            raise

    def attribute(self, target: Callable[[torch.Tensor], torch.Tensor], steps: int = DEFAULT_STEPS,
                  chunk: int = 25) -> tuple[np.ndarray, dict]:
        """Per-token scores for the scalar ``target(logits)`` (one value per batch row), and the completeness
        figures: their sum, F(input) - F(baseline) and the absolute difference of the two."""
        nodes, weights = gauss_legendre(steps)
        delta = self.point - self.baseline
        integral = torch.zeros_like(self.point[0])
        for start in range(0, steps, chunk):
            alphas = torch.tensor(nodes[start:start + chunk], dtype=delta.dtype).view(-1, 1, 1)
            points = (self.baseline + alphas * delta).requires_grad_(True)
            self.hook.replacement = points
            try:
                batch = {k: v.expand(len(alphas), -1) for k, v in self.inputs.items()}
                (grad,) = torch.autograd.grad(target(self.model(**batch).logits).sum(), points)
            finally:
                self.hook.replacement = None
            step_weights = torch.tensor(weights[start:start + chunk], dtype=grad.dtype).view(-1, 1, 1)
            integral += (grad * step_weights).sum(0)
        scores = (delta[0] * integral).sum(-1).detach().double().numpy()
        with torch.no_grad():
            gap = float(target(self.logits)[0] - target(self.baseline_logits)[0])
        return scores, {"steps": steps, "baseline": BASELINE, "sum": float(scores.sum()), "logit_delta": gap,
                        "error": abs(float(scores.sum()) - gap)}

    def converged(self, target: Callable[[torch.Tensor], torch.Tensor],
                  quadrature: Quadrature) -> tuple[np.ndarray, dict]:
        """``attribute`` with more steps (doubling) until completeness holds within the tolerance, or
        ``max_steps`` is reached; the figures say which (``within_tolerance``)."""
        steps = quadrature.steps
        while True:
            scores, figures = self.attribute(target, steps, quadrature.chunk)
            within = quadrature.allows(figures["error"], figures["logit_delta"])
            if within or steps >= quadrature.max_steps:
                tolerance = quadrature.rtol * abs(figures["logit_delta"]) + quadrature.atol
                return scores, {**figures, "tolerance": tolerance, "within_tolerance": within}
            steps = min(2 * steps, quadrature.max_steps)

    def close(self) -> None:
        self.hook.remove()


def encode(explained, text: str) -> tuple[dict, torch.Tensor, list, bool]:
    """Model inputs (truncated to the max length), the baseline ids, the token offsets and whether it was cut."""
    tokenizer = explained.tokenizer
    enc = tokenizer(text, truncation=True, max_length=explained.max_length, return_offsets_mapping=True,
                    return_special_tokens_mask=True, return_tensors="pt")
    offsets = [tuple(pair) for pair in enc.pop("offset_mapping")[0].tolist()]
    special = enc.pop("special_tokens_mask").bool()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    baseline = torch.where(special, enc["input_ids"], torch.full_like(enc["input_ids"], pad))
    full = len(tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])
    return dict(enc), baseline, offsets, full > explained.max_length


def explain_sequence(explained, text: str, target: str | None = None,
                     quadrature: Quadrature = Quadrature()) -> Explanation:
    """Token and word attributions for one class of a sequence classifier (default: the predicted one)."""
    inputs, baseline, offsets, cut = encode(explained, check_text(text))
    ig = IntegratedGradients(explained.model, explained.embeddings, inputs, baseline)
    try:
        pick = choose(explained.labels, target, ig.logits[0].detach().numpy())
        scores, completeness = ig.converged(lambda logits: logits[:, pick.column], quadrature)
        probs = pick.probabilities(ig.logits[0].detach().numpy())
    finally:
        ig.close()
    words, tokens, _ = word_scores(text, offsets, scores)
    return Explanation(text=text, task=explained.task, method=METHOD, unit="logit", label=pick.labels[pick.predicted],
                       target=pick.labels[pick.target], probability=float(probs[pick.target]),
                       scores=dict(zip(pick.labels, map(float, probs))), words=words, tokens=tokens, truncated=cut,
                       details={"completeness": completeness})


def entity_types(labels: list[str]) -> list[str]:
    return sorted({label[2:] for label in labels if label[:2] in ("B-", "I-")})


def entity_positions(entity: dict, offsets: list, word_ids: list) -> list[int]:
    """The first sub-token of each word inside the entity's character span (``offsets`` without leading spaces,
    ``data.words.content_offsets``: a SentencePiece '▁' of its own is its word's first piece, as in training)."""
    positions, seen = [], set()
    for position, ((start, _), word) in enumerate(zip(offsets, word_ids)):
        if word is not None and word not in seen and entity["start"] <= start < entity["end"]:
            seen.add(word)
            positions.append(position)
    return positions


def explain_entities(explained, text: str, target: str | None = None,
                     quadrature: Quadrature = Quadrature()) -> list[Explanation]:
    """One explanation per entity the model finds (only entities of type ``target`` when given)."""
    types = entity_types(explained.labels)
    if target is not None and target not in types:
        raise ExplainError(f"unknown entity type {target!r}; the model's types: {', '.join(types)}")
    inputs, baseline, offsets, cut = encode(explained, check_text(text))
    ig = IntegratedGradients(explained.model, explained.embeddings, inputs, baseline)
    try:
        logits = ig.logits[0].detach().numpy()
        word_ids = token_words(text, offsets)
        found = [e for e in decode_entities(text, offsets, logits, explained.labels, word_ids)
                 if target is None or e["type"] == target]
        return [entity_explanation(explained, ig, text, offsets, word_ids, entity, cut, quadrature)
                for entity in found]
    finally:
        ig.close()


def entity_explanation(explained, ig: IntegratedGradients, text: str, offsets: list, word_ids: list, entity: dict,
                       cut: bool, quadrature: Quadrature) -> Explanation:
    positions = entity_positions(entity, content_offsets(text, offsets), word_ids)
    tags = [int(ig.logits[0, p].argmax()) for p in positions]
    scores, completeness = ig.converged(lambda logits: logits[:, positions, tags].mean(-1), quadrature)
    words, tokens, _ = word_scores(text, offsets, scores)
    return Explanation(text=text, task=explained.task, method=METHOD, unit="logit", label=entity["type"],
                       target=entity["type"], probability=float(entity["score"]), scores={}, words=words,
                       tokens=tokens, truncated=cut, entity=dict(entity),
                       details={"completeness": completeness, "tags": [explained.labels[t] for t in tags]})


def explain(explained, text: str, target: str | None = None, quadrature: Quadrature = Quadrature()) -> list[Explanation]:
    """Sequence classification: one explanation of the text; token classification: one per entity found."""
    if explained.task == "token-classification":
        return explain_entities(explained, text, target, quadrature)
    return [explain_sequence(explained, text, target, quadrature)]
