"""The training loss when it is not the model's own: per-head cross-entropy (topic head) and class weights.

Used by a small Trainer mixin that overrides ``compute_loss`` only, so it composes with the
adversarial trainer (whose FGM/PGD steps call ``compute_loss`` too) and with every method.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from toolchain.tasks.joint import has_topic_head, heads_of


def class_weights(label_ids: list[int], labels: list[str], kind: str) -> np.ndarray:
    """Weight per class from the training counts: ``balanced`` = n / (classes * n_c), ``sqrt`` = its root;
    scaled so that the mean weight over the training examples is 1 (within each head for a joint model)."""
    counts = np.bincount(np.asarray(label_ids), minlength=len(labels)).astype(float)
    weights = np.ones(len(labels))
    if kind == "none":
        return weights
    groups = [range(h.start, h.stop) for h in heads_of(labels)] if has_topic_head(labels) else [range(len(labels))]
    for group in groups:
        idx = np.array(list(group))
        seen = idx[counts[idx] > 0]
        raw = counts[seen].sum() / (len(seen) * counts[seen])
        raw = np.sqrt(raw) if kind == "sqrt" else raw
        weights[seen] = raw * counts[seen].sum() / (raw * counts[seen]).sum()
    return weights


class HeadLoss:
    """Cross-entropy over each example's own head (the other head's logits masked out), weighted per class
    and, for topic examples, by ``topic_weight``; averaged over the batch."""

    def __init__(self, labels: list[str], weights: np.ndarray | None = None, topic_weight: float = 1.0):
        self.topic_start = heads_of(labels)[1].start if has_topic_head(labels) else None
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.float32)
        self.topic_weight = topic_weight
        self.classes = len(labels)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        weight = torch.ones_like(labels, dtype=torch.float32)
        if self.topic_start is not None:
            is_topic = labels >= self.topic_start
            topic_columns = torch.arange(self.classes, device=logits.device) >= self.topic_start
            logits = logits.masked_fill(is_topic[:, None] != topic_columns[None, :], float("-inf"))
            weight = torch.where(is_topic, torch.full_like(weight, self.topic_weight), weight)
        if self.weights is not None:
            weight = weight * self.weights.to(logits.device)[labels]
        return (F.cross_entropy(logits, labels, reduction="none") * weight).mean()


class HeadLossMixin:
    """Trainer mixin: the loss is ``head_loss(logits, labels)`` instead of the model's own."""

    def __init__(self, *args, head_loss: HeadLoss, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_loss = head_loss
        self.model_accepts_loss_kwargs = False  # the loss is a batch mean: let the Trainer scale accumulation

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
        loss = self.head_loss(outputs.logits, inputs["labels"])
        return (loss, outputs) if return_outputs else loss


def trainer_class(base: type, custom_loss: bool) -> type:
    """``base`` (Trainer or the adversarial trainer), with the head loss mixed in when it is needed."""
    return type(f"HeadLoss{base.__name__}", (HeadLossMixin, base), {}) if custom_loss else base
