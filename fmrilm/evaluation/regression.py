"""Scores for continuous and categorical predictions: R², MAE, accuracy, ROC AUC.

R² here is pooled over outputs: ``1 - Σ(y - ŷ)² / Σ(y - ȳ_col)²`` where ȳ_col is the mean of
each output column (parcel) over the rows (time points or subjects). A perfect predictor scores
1, predicting each column's mean scores 0, and worse-than-mean predictors go negative. Pooling
weights parcels by their variance, so near-constant parcels cannot dominate the average the way
they do in a per-column mean of R².
"""

from __future__ import annotations

import numpy as np

from fmrilm.errors import InputError, check_finite


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


def regression_scores(y_true, y_pred) -> dict:
    """MAE, R² and Pearson r of a continuous phenotype (e.g. age in years)."""
    t, p = _paired(y_true, y_pred, "regression")
    r = float(np.corrcoef(t.ravel(), p.ravel())[0, 1]) if t.std() > 0 and p.std() > 0 else float("nan")
    return {"mae": mean_absolute_error(t, p), "r2": r2_score(t, p), "pearson_r": r, "n": int(t.size)}


def classification_scores(y_true, y_pred, y_score=None) -> dict:
    """Accuracy (and ROC AUC for two classes with scores) of a categorical phenotype.

    Parameters
    ----------
    y_true, y_pred : list of labels (str or int)
    y_score : array [N], optional
        Score or probability of the positive class: the larger of the two sorted labels (e.g. "M"
        of "F"/"M", "patient" of "control"/"patient"). AUC is None without scores or when the
        targets do not have exactly two classes.
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape or t.ndim != 1 or t.size == 0:
        raise InputError("classification", "shape", f"targets {t.shape} and predictions {p.shape}; expected equal [N]")
    out = {"accuracy": float((t == p).mean()), "n": int(t.size), "auc": None}
    classes = np.unique(t)
    if y_score is not None and len(classes) == 2:
        from sklearn.metrics import roc_auc_score

        score = np.asarray(y_score, np.float64)
        if score.shape != t.shape:
            raise InputError("classification", "y_score", f"shape {score.shape}, expected {t.shape}")
        check_finite(score, "classification", "y_score")
        out["auc"] = float(roc_auc_score(t == classes[1], score))
    return out
