"""Scores for continuous and categorical predictions: R², MAE, accuracy, balanced accuracy, ROC AUC.

The phenotype scores (:func:`regression_scores`, :func:`classification_scores`) carry 95 % percentile
bootstrap intervals over rows (test subjects); the categorical metrics are computed along the last
axis so that all resamples are scored at once.

R² here is pooled over outputs: ``1 - Σ(y - ŷ)² / Σ(y - ȳ_col)²`` where ȳ_col is the mean of
each output column (parcel) over the rows (time points or subjects). A perfect predictor scores
1, predicting each column's mean scores 0, and worse-than-mean predictors go negative. Pooling
weights parcels by their variance, so near-constant parcels cannot dominate the average the way
they do in a per-column mean of R².
"""

from __future__ import annotations

import numpy as np

from fmrilm.errors import InputError, check_finite
from fmrilm.evaluation.uncertainty import resampled_ci


def _paired(y_true, y_pred, field: str) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if t.shape != p.shape:
        raise InputError(field, "shape", f"predictions {p.shape} do not match targets {t.shape}")
    if t.size == 0:
        raise InputError(field, "shape", "no values to score")
    check_finite(t, field, "y_true")
    check_finite(p, field, "y_pred")
    return t, p


def r2_score(y_true, y_pred) -> float:
    """Pooled R² of predictions [N] or [N, P] (see module docstring)."""
    t, p = _paired(y_true, y_pred, "r2")
    t2, p2 = t.reshape(len(t), -1), p.reshape(len(p), -1)
    total = ((t2 - t2.mean(axis=0)) ** 2).sum()
    if total == 0:
        raise InputError("r2", "y_true", "targets have zero variance in every column; R² is undefined")
    return float(1.0 - ((t2 - p2) ** 2).sum() / total)


def mean_absolute_error(y_true, y_pred) -> float:
    t, p = _paired(y_true, y_pred, "mae")
    return float(np.abs(t - p).mean())


def regression_scores(y_true, y_pred, seed: int = 0) -> dict:
    """MAE, R² and Pearson r of a continuous phenotype (e.g. age in years), and the MAE's 95 %
    bootstrap interval over rows (subjects), ``ci95: {"mae": [low, high]}``."""
    t, p = _paired(y_true, y_pred, "regression")
    r = float(np.corrcoef(t.ravel(), p.ravel())[0, 1]) if t.std() > 0 and p.std() > 0 else float("nan")
    error = np.abs(t - p).reshape(len(t), -1).mean(-1)
    # R² is undefined on targets without spread (e.g. one test subject): reported as NaN beside the MAE
    r2 = r2_score(t, p) if ((t - t.mean(0)) ** 2).sum() > 0 else float("nan")
    return {"mae": mean_absolute_error(t, p), "r2": r2, "pearson_r": r, "n": int(t.size),
            "ci95": {"mae": resampled_ci(lambda rows: error[rows].mean(-1), len(error), seed=seed)}}


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Mean per-class recall over the classes present, along the last axis (rows ``[..., N]``).

    Chance is 1 / n_classes whatever the class balance, unlike accuracy (a majority-class guess
    scores the majority share).
    """
    hit = y_true == y_pred
    recalls = []
    for label in np.unique(y_true):
        of_class = y_true == label
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(of_class.any(-1), (hit & of_class).sum(-1) / of_class.sum(-1), np.nan))
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.stack(recalls), axis=0)


def roc_auc(positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC along the last axis: P(score of a positive > score of a negative), ties counting ½.

    Mann–Whitney U from tie-averaged ranks, so resamples ``[R, N]`` are scored at once. NaN where a
    row holds only one class.
    """
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool)
    ranks = rankdata(score, axis=-1)
    n_pos = positive.sum(-1)
    n_neg = positive.shape[-1] - n_pos
    u = (ranks * positive).sum(-1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def classification_scores(y_true, y_pred, y_score=None, seed: int = 0) -> dict:
    """Accuracy, balanced accuracy (and ROC AUC for two classes with scores) of a categorical
    phenotype, each with its 95 % bootstrap interval over rows (subjects) in ``ci95``.

    Parameters
    ----------
    y_true, y_pred : list of labels (str or int)
    y_score : array [N], optional
        Score or probability of the positive class: the larger of the two sorted labels (e.g. "M"
        of "F"/"M", "patient" of "control"/"patient"). AUC is None without scores or when the
        targets do not have exactly two classes.
    seed : int
        Seeds the resamples; scorings of the same rows with the same seed share their resamples.
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape or t.ndim != 1 or t.size == 0:
        raise InputError("classification", "shape", f"targets {t.shape} and predictions {p.shape}; expected equal [N]")
    hit = t == p
    metrics = {"accuracy": lambda rows: hit[rows].mean(-1), "balanced_accuracy": lambda rows: balanced_accuracy(
        t[rows], p[rows])}
    classes = np.unique(t)
    if y_score is not None and len(classes) == 2:
        score = np.asarray(y_score, np.float64)
        if score.shape != t.shape:
            raise InputError("classification", "y_score", f"shape {score.shape}, expected {t.shape}")
        check_finite(score, "classification", "y_score")
        positive = t == classes[1]
        metrics["auc"] = lambda rows: roc_auc(positive[rows], score[rows])
    every = np.arange(t.size)
    out = {name: float(metric(every)) for name, metric in metrics.items()}
    ci = {"accuracy": None, "balanced_accuracy": None, "auc": None}
    ci.update({name: resampled_ci(metric, t.size, seed=seed) for name, metric in metrics.items()})
    return {"accuracy": out["accuracy"], "n": int(t.size), "auc": out.get("auc"),
            "balanced_accuracy": out["balanced_accuracy"], "ci95": ci}
