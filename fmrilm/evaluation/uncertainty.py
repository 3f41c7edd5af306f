"""Bootstrap confidence intervals for the paired comparisons behind the targets.

Every condition is scored on the same items, so a comparison resamples items, not scores: one
bootstrap draw picks n items with replacement and recomputes the statistic on the model's and the
control's scores of those items together (``scipy.stats.bootstrap(..., paired=True)``, percentile
intervals). With ~150 items a VQA ratio of 1.6 is uncertain by about ±0.3, which says whether a
missed threshold is a miss or noise.

>>> low, high = paired_ratio_ci(model_hits, shuffled_hits)        # mean(model) / mean(control)
>>> low, high = paired_difference_ci(model_semscore, ridge_semscore)  # mean(model - baseline)
"""

from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap

from fmrilm.errors import InputError, check_finite


def _paired(model, control, field: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(model, np.float64).ravel(), np.asarray(control, np.float64).ravel()
    if len(a) != len(b) or len(a) < 2:
        raise InputError(field, "items", f"{len(a)} model and {len(b)} control scores; need the same n >= 2")
    check_finite(a, field)
    check_finite(b, field)
    return a, b


def _interval(statistic, a: np.ndarray, b: np.ndarray, confidence: float, n_resamples: int,
              seed: int) -> tuple[float, float]:
    result = bootstrap((a, b), statistic, paired=True, vectorized=True, confidence_level=confidence,
                       n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


def paired_ratio_ci(model, control, confidence: float = 0.95, n_resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``mean(model) / mean(control)`` over item resamples.

    Parameters
    ----------
    model, control : array-like of float [n]
        Per-item scores (e.g. SemScore, or 0/1 exact-match hits) of the same items.

    Returns
    -------
    (low, high) : tuple of float
        A resample whose control mean is 0 counts as an infinite ratio.
    """
    a, b = _paired(model, control, "paired_ratio_ci")
    if b.mean() <= 0:
        raise InputError("paired_ratio_ci", "control", "mean is not positive; the ratio is undefined")

    def ratio(x, y, axis=-1):
        num, den = x.mean(axis=axis), y.mean(axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.inf)

    return _interval(ratio, a, b, confidence, n_resamples, seed)


def paired_difference_ci(model, baseline, confidence: float = 0.95, n_resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``mean(model - baseline)`` over item resamples."""
    a, b = _paired(model, baseline, "paired_difference_ci")
    return _interval(lambda x, y, axis=-1: (x - y).mean(axis=axis), a, b, confidence, n_resamples, seed)
