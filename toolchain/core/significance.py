"""The one paired bootstrap every comparison uses (seed groups in ``compare``, the export's accuracy gate).

Items are resampled with replacement through :func:`scipy.stats.bootstrap` over their indices, so the
statistic sees the same resampled items for both sides of the pair, whatever per-item shape they have
(labels, per-type entity counts, seed-averaged scores).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np


def paired_bootstrap(difference: Callable[[np.ndarray], float], items: int, resamples: int,
                     seed: int) -> np.ndarray:
    """The bootstrap distribution of ``difference(indices)`` over ``resamples`` resamples of ``items`` items."""
    from scipy.stats import bootstrap

    result = bootstrap((np.arange(items),), difference, n_resamples=resamples, vectorized=False,
                       method="percentile", rng=np.random.default_rng(seed))
    return np.asarray(result.bootstrap_distribution, dtype=float)


def interval95(distribution: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of a bootstrap distribution."""
    low, high = np.percentile(distribution, [2.5, 97.5])
    return float(low), float(high)
