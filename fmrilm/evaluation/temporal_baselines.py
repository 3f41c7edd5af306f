"""Next-scan prediction baselines on parcel time series: persistence and linear autoregression.

Series are ``[S, T, P]`` (subjects × time points × parcels) or a single ``[T, P]`` run. With
``order`` lags, the targets are the scans at t = order … T-1 of every subject, predicted from the
``order`` scans before them; :func:`next_scan_targets` gives exactly those rows, so any model's
predictions can be scored against the same targets with :func:`fmrilm.evaluation.regression.r2_score`.

- persistence: the next scan equals the current one (x̂_{t+1} = x_t).
- linear AR, ``per_parcel``: each parcel is an AR(order) process of its own past.
- linear AR, ``multivariate``: a ridge VAR(order); every parcel's past predicts every parcel.

Coefficients are fitted by ridge regression on training runs only (centred with training means,
so the intercept is not penalised).
"""

from __future__ import annotations

import numpy as np

from fmrilm.errors import InputError, check_finite
from fmrilm.evaluation.regression import r2_score

MODES = ("per_parcel", "multivariate")


def _as_runs(series, order: int, field: str) -> np.ndarray:
    arr = np.asarray(series, np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(field, "shape", f"{arr.shape}; expected [S, T, P] or [T, P]")
    if order < 1 or arr.shape[1] <= order:
        raise InputError(field, "shape", f"{arr.shape[1]} time points cannot give targets for order={order} "
                         "(need order >= 1 and T > order)")
    check_finite(arr, field)
    return arr


def lagged(series, order: int = 1, field: str = "series") -> tuple[np.ndarray, np.ndarray]:
    """Lag matrix and targets: ``lags [N, order, P]`` (lag 1 first) and ``targets [N, P]``,
    N = S · (T - order), subjects in order."""
    runs = _as_runs(series, order, field)
    t = runs.shape[1]
    lags = np.stack([runs[:, order - lag:t - lag] for lag in range(1, order + 1)], axis=2)
    return lags.reshape(-1, order, runs.shape[2]), runs[:, order:].reshape(-1, runs.shape[2])


def next_scan_targets(series, order: int = 1) -> np.ndarray:
    """The scans [N, P] that next-scan predictions are scored against (see module docstring)."""
    return lagged(series, order)[1]


def persistence_forecast(series, order: int = 1) -> np.ndarray:
    """Predict each target scan by the scan just before it → [N, P]."""
    return lagged(series, order)[0][:, 0]


class LinearAR:
    """Ridge autoregression of the next scan on the previous `order` scans.

    Parameters
    ----------
    order : int
        Number of past scans used.
    mode : {"per_parcel", "multivariate"}
    alpha : float
        Ridge penalty per training sample (the normal equations get ``alpha · N · I``).
    """

    def __init__(self, order: int = 1, mode: str = "per_parcel", alpha: float = 1e-3):
        if mode not in MODES:
            raise InputError("LinearAR", "mode", f"{mode!r}; expected one of {MODES}")
        self.order, self.mode, self.alpha = order, mode, alpha
        self.coef = None

    def fit(self, train) -> LinearAR:
        """Fit on training runs [S, T, P] or [T, P]."""
        lags, targets = lagged(train, self.order, "train")
        self.lag_mean, self.target_mean = lags.mean(0), targets.mean(0)
        x, y = lags - self.lag_mean, targets - self.target_mean
        n, order, p = x.shape
        if self.mode == "per_parcel":
            # One small (order × order) system per parcel, solved as a batch.
            gram = np.einsum("nkp,nlp->pkl", x, x) + self.alpha * n * np.eye(order)
            self.coef = np.linalg.solve(gram, np.einsum("nkp,np->pk", x, y)[..., None])[..., 0]  # [P, order]
        else:
            flat = x.reshape(n, order * p)
            gram = flat.T @ flat + self.alpha * n * np.eye(order * p)
            self.coef = np.linalg.solve(gram, flat.T @ y)  # [order·P, P]
        return self

    def predict(self, series) -> np.ndarray:
        """Predictions [N, P] for the targets of `series` (as :func:`next_scan_targets`)."""
        if self.coef is None:
            raise InputError("LinearAR", "coef", "not fitted; call fit() on training runs first")
        lags = lagged(series, self.order)[0]
        if lags.shape[2] != self.lag_mean.shape[1]:
            raise InputError("series", "shape",
                             f"{lags.shape[2]} parcels, the model was fitted on {self.lag_mean.shape[1]}")
        x = lags - self.lag_mean
        if self.mode == "per_parcel":
            return np.einsum("nkp,pk->np", x, self.coef) + self.target_mean
        return x.reshape(len(x), -1) @ self.coef + self.target_mean


def temporal_baselines(train, test, order: int = 1, mode: str = "per_parcel", alpha: float = 1e-3) -> dict:
    """R² of persistence and a linear AR on the next scans of held-out runs.

    Returns
    -------
    dict
        ``{"persistence": r2, "linear_ar": r2, "order", "mode", "n_targets"}``.
    """
    targets = next_scan_targets(test, order)
    ar = LinearAR(order, mode, alpha).fit(train)
    return {"persistence": r2_score(targets, persistence_forecast(test, order)),
            "linear_ar": r2_score(targets, ar.predict(test)),
            "order": order, "mode": mode, "n_targets": int(len(targets))}
