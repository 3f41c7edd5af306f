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

At patch resolution (fMRI-LM's F2F, windows ``[S, n_patches, P, W]`` of
:func:`fmrilm.tokenizer.data.rest_windows`), :class:`PatchAR` is the linear AR: each parcel's next
W-TR patch from its previous `order` patches.
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


class PatchAR:
    """Ridge map from a parcel's previous `order` patches (order·W values) to its next patch (W values),
    one map per parcel: the linear AR of next-patch prediction.

    Parameters
    ----------
    order : int
        Past patches used.
    alpha : float
        Ridge penalty per training sample (as :class:`LinearAR`).
    pooled : bool
        One map shared by every parcel, fitted on all of them: for a single short run, where P maps
        of (order·W)² coefficients each would have fewer training patches than coefficients.
    """

    def __init__(self, order: int = 1, alpha: float = 1e-3, pooled: bool = False):
        self.order, self.alpha, self.pooled, self.coef = order, alpha, pooled, None

    def _lags(self, windows, field: str) -> tuple[np.ndarray, np.ndarray]:
        """``[S, n, P, W]`` → inputs ``[N, P, order·W]`` (oldest patch first) and targets ``[N, P, W]``."""
        w = np.asarray(windows, np.float64)
        if w.ndim != 4 or self.order < 1 or w.shape[1] <= self.order:
            raise InputError(field, "shape", f"{w.shape}: expected [S, n_patches, P, W] with n_patches > "
                             f"order={self.order}")
        check_finite(w, field)
        n = w.shape[1]
        x = np.concatenate([w[:, k:n - self.order + k] for k in range(self.order)], axis=-1)
        return x.reshape(-1, *x.shape[2:]), w[:, self.order:].reshape(-1, *w.shape[2:])

    def fit(self, windows) -> PatchAR:
        """Fit on training runs' patches ``[S, n_patches, P, W]``."""
        x, y = self._lags(windows, "train")
        self.x_mean, self.y_mean = x.mean(0), y.mean(0)
        x, y = x - self.x_mean, y - self.y_mean
        gram = np.einsum("npk,npl->pkl", x, x) + self.alpha * len(x) * np.eye(x.shape[-1])
        cross = np.einsum("npk,npw->pkw", x, y)
        if self.pooled:  # the same map for every parcel: sums over parcels, repeated
            gram, cross = (np.broadcast_to(a.sum(0), a.shape) for a in (gram, cross))
        self.coef = np.linalg.solve(gram, cross)  # [P, order·W, W]
        return self

    def predict(self, context) -> np.ndarray:
        """Next patch ``[N, P, W]`` from context ``[N, order, P, W]`` (oldest first)."""
        if self.coef is None:
            raise InputError("PatchAR", "coef", "not fitted; call fit() on training runs first")
        c = np.asarray(context, np.float64)
        if c.ndim != 4 or c.shape[1] != self.order or c.shape[2:] != (self.coef.shape[0], self.coef.shape[2]):
            raise InputError("context", "shape", f"{c.shape}: expected [N, {self.order}, {self.coef.shape[0]}, "
                             f"{self.coef.shape[2]}]")
        x = np.concatenate(list(c.transpose(1, 0, 2, 3)), axis=-1) - self.x_mean
        return np.einsum("npk,pkw->npw", x, self.coef) + self.y_mean
