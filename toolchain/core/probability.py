"""Class probabilities from logits: the one softmax every stage and the service use."""
from __future__ import annotations

import numpy as np
from scipy.special import softmax as _softmax


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis, in float64 (scipy's stable implementation)."""
    return _softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)
