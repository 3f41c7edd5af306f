"""Bootstrap confidence intervals for the paired comparisons behind the targets.

Every condition is scored on the same items, so a comparison resamples items, not scores: one
bootstrap draw picks items with replacement and recomputes the statistic on the model's and the
control's scores of those items together (percentile intervals). With ~150 items a VQA ratio of 1.6
is uncertain by about ±0.3, which says whether a missed threshold is a miss or noise.

An evaluation item is a (subject, stimulus) pair, and the items of one stimulus are correlated (the
same image, captions and questions for every subject), so resampling items independently makes the
interval too narrow. With ``clusters`` (e.g. the stimulus of each item) a draw picks clusters with
replacement and takes all items of each drawn cluster together (cluster bootstrap); the statistic is
recomputed on the pooled items. Without it, items are resampled by ``scipy.stats.bootstrap(...,
paired=True)``, which cannot resample clusters.

>>> low, high = paired_ratio_ci(model_hits, shuffled_hits, clusters=stimulus)  # mean(model) / mean(control)
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


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, infinite where a resample's control total is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.inf)


def _item_interval(statistic, a: np.ndarray, b: np.ndarray, confidence: float, n_resamples: int,
                   seed: int) -> tuple[float, float]:
    result = bootstrap((a, b), statistic, paired=True, vectorized=True, confidence_level=confidence,
                       n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(low), float(high)


def cluster_totals(values: list[np.ndarray], clusters, field: str) -> np.ndarray:
    """Per-cluster sums ``[len(values), n_clusters]`` of item values, clusters in sorted label order.

    Raises
    ------
    InputError
        When `clusters` does not give one label per item, or names fewer than two clusters.
    """
    labels = np.asarray(clusters).ravel()
    if labels.shape != values[0].shape:
        raise InputError(field, "clusters", f"{labels.size} labels for {values[0].size} items")
    _, inverse = np.unique(labels, return_inverse=True)
    n_clusters = int(inverse.max()) + 1
    if n_clusters < 2:
        raise InputError(field, "clusters", "a single cluster: resampling clusters gives no spread")
    return np.stack([np.bincount(inverse, v, minlength=n_clusters) for v in values])


def _cluster_interval(statistic, totals: np.ndarray, confidence: float, n_resamples: int,
                      seed: int) -> tuple[float, float]:
    """Percentile interval of ``statistic(*resampled totals)`` over cluster resamples.

    A resample draws n_clusters clusters with replacement, i.e. multinomial counts per cluster, so
    the totals of the pooled items of every resample are one matrix product ``[R, C] @ [C, k]``.
    """
    n_clusters = totals.shape[1]
    counts = np.random.default_rng(seed).multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters),
                                                     size=n_resamples)
    values = statistic(*(counts @ totals.T).T)
    tail = (1.0 - confidence) / 2
    with np.errstate(invalid="ignore"):
        bounds = np.quantile(values, [tail, 1.0 - tail])
    # interpolating next to an infinite ratio gives NaN (inf - inf); that bound is unbounded
    return tuple(float(np.inf if np.isnan(v) else v) for v in bounds)


def paired_ratio_ci(model, control, confidence: float = 0.95, n_resamples: int = 2000,
                    seed: int = 0, clusters=None) -> tuple[float, float]:
    """Percentile interval of ``mean(model) / mean(control)`` over item (or cluster) resamples.

    Parameters
    ----------
    model, control : array-like of float [n]
        Per-item scores (e.g. SemScore, or exact-match hits, possibly fractional) of the same items.
    clusters : array-like [n], optional
        A cluster label per item (e.g. its stimulus): clusters are resampled, each with all its
        items. None resamples items independently.

    Returns
    -------
    (low, high) : tuple of float
        A resample whose control mean is 0 counts as an infinite ratio.
    """
    a, b = _paired(model, control, "paired_ratio_ci")
    if b.mean() <= 0:
        raise InputError("paired_ratio_ci", "control", "mean is not positive; the ratio is undefined")
    if clusters is None:
        return _item_interval(lambda x, y, axis=-1: _ratio(x.mean(axis=axis), y.mean(axis=axis)), a, b,
                              confidence, n_resamples, seed)
    # the items' count cancels: the ratio of means is the ratio of the pooled sums
    return _cluster_interval(_ratio, cluster_totals([a, b], clusters, "paired_ratio_ci"), confidence,
                             n_resamples, seed)


def paired_difference_ci(model, baseline, confidence: float = 0.95, n_resamples: int = 2000,
                         seed: int = 0, clusters=None) -> tuple[float, float]:
    """Percentile interval of ``mean(model - baseline)`` over item (or cluster) resamples.

    `clusters` as in :func:`paired_ratio_ci`; a cluster resample's mean is over its pooled items.
    """
    a, b = _paired(model, baseline, "paired_difference_ci")
    if clusters is None:
        return _item_interval(lambda x, y, axis=-1: (x - y).mean(axis=axis), a, b, confidence, n_resamples,
                              seed)
    totals = cluster_totals([a - b, np.ones_like(a)], clusters, "paired_difference_ci")
    return _cluster_interval(lambda diff, n: diff / n, totals, confidence, n_resamples, seed)


def resampled_ci(statistic, n: int, confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> list[float] | None:
    """Percentile interval of a statistic of `n` items (e.g. test subjects) over item resamples.

    Parameters
    ----------
    statistic : callable
        ``statistic(rows)`` gets the resamples as an index matrix int ``[n_resamples, n]`` and
        returns the statistic of each resample ``[n_resamples]`` (vectorised: no Python loop over
        resamples). NaN marks a resample where it is undefined (e.g. an AUC drawn from one class);
        those are left out.

    Returns
    -------
    [low, high] or None
        None when the statistic is undefined in every resample.
    """
    if n < 1:
        raise InputError("resampled_ci", "n", "no items to resample")
    rows = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    values = np.asarray(statistic(rows), np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    tail = (1.0 - confidence) / 2
    return [float(v) for v in np.quantile(values, [tail, 1.0 - tail])]
