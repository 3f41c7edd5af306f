"""Dose-response statistics of a stimulation experiment: bootstrap intervals, rises, specificity.

One reader (the LM's captions, or the ideal observer's decoded stimuli) gives a value per perturbed
scan: 1 if it names the concept, else 0. Per condition the values are laid out as

- ``target``, ``other_category``: ``[A, S]`` (α, scan);
- ``control_patches``: ``[A, P, K]`` (α, control patch, the patch's scans).

Intervals are percentile bootstraps (:data:`CONFIDENCE`). Target and other category resample the
same scan indices (their scans are the same, so their difference is paired); control patches
resample patches, then each drawn patch's scans, independently of the target's draw (conservative
for the target − control difference, as the control scans are a subset of the target's).

The rise of a condition is its rate at the largest α minus its rate at α = 0. Specificity is the
target's rise over the control patches' mean rise, and is reported only when the control rise's
interval lies above 0: otherwise the ratio is undefined (a flat control would make it infinite,
a noisy one arbitrary), and the rise difference target − control, with its interval, carries the
comparison.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95


def interval(draws: np.ndarray) -> list[float | None]:
    """Percentile interval over the first axis; non-finite bounds (a ratio's) as None for JSON."""
    lo, hi = np.quantile(draws, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2], axis=0)
    return [float(b) if np.isfinite(b) else None for b in (lo, hi)]


def spearman(x, y) -> float | None:
    """Spearman correlation, None for a flat response (undefined)."""
    from scipy.stats import spearmanr

    if np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator,
                    scan_draws: np.ndarray | None = None) -> np.ndarray:
    """Bootstrap means per α, ``[n_boot, A]``, of ``[A, S]`` (scans resampled; `scan_draws` [n_boot, S]
    reuses a draw) or ``[A, P, K]`` values (patches resampled, then each drawn patch's scans)."""
    values = np.asarray(values, np.float64)
    if values.ndim == 2:
        idx = rng.integers(0, values.shape[1], (n_boot, values.shape[1])) if scan_draws is None else scan_draws
        return values[:, idx].mean(-1).T
    n_patches, n_scans = values.shape[1:]
    patches = rng.integers(0, n_patches, (n_boot, n_patches, 1))
    scans = rng.integers(0, n_scans, (n_boot, n_patches, n_scans))
    return values[:, patches, scans].mean((-1, -2)).T


def dose_curve(values: np.ndarray, draws: np.ndarray, alphas, key: str) -> list[dict]:
    """``[{"alpha", key, key + "_ci"}]`` per α: the mean over scans (and patches) with its interval."""
    means = np.asarray(values, np.float64).reshape(len(alphas), -1).mean(1)
    return [{"alpha": float(a), key: float(m), f"{key}_ci": interval(draws[:, i])}
            for i, (a, m) in enumerate(zip(alphas, means))]


def compare_conditions(values: dict[str, np.ndarray], alphas, n_boot: int, rng: np.random.Generator,
                       key: str = "concept_rate") -> dict:
    """Curves, rises, specificity and rise differences of one reader.

    Parameters
    ----------
    values : dict
        ``target``, ``control_patches``, ``other_category`` → values laid out as in the module docstring.
    alphas : sequence of float
        Ascending, starting at 0.
    n_boot : int
    rng : numpy.random.Generator
    key : str
        Name of the value in the dose rows.

    Returns
    -------
    dict
        ``conditions`` (per condition ``doses``, ``rise``, ``rise_ci``, ``spearman``; control patches
        also ``per_patch`` rates per α), ``specificity`` (``value``, ``ci``, ``status``),
        ``rise_difference_vs_controls`` and ``rise_difference_vs_other`` (``value``, ``ci``).
    """
    shared = rng.integers(0, values["target"].shape[1], (n_boot, values["target"].shape[1]))
    draws = {name: bootstrap_means(v, n_boot, rng, shared if np.ndim(v) == 2 else None) for name, v in values.items()}
    conditions, rise, rise_draws = {}, {}, {}
    for name, v in values.items():
        doses = dose_curve(v, draws[name], alphas, key)
        rise[name] = doses[-1][key] - doses[0][key]
        rise_draws[name] = draws[name][:, -1] - draws[name][:, 0]
        conditions[name] = {"doses": doses, "rise": rise[name], "rise_ci": interval(rise_draws[name]),
                            "spearman": spearman(alphas, [d[key] for d in doses])}
        if np.ndim(v) == 3:
            conditions[name]["per_patch"] = np.asarray(v, np.float64).mean(-1).tolist()
    target, control = rise_draws["target"], rise_draws["control_patches"]
    lo, hi = conditions["control_patches"]["rise_ci"]
    if lo > 0:
        ratio = np.divide(target, control, out=np.full_like(target, np.inf), where=control > 0)
        specificity = {"value": rise["target"] / rise["control_patches"], "ci": interval(ratio), "status": "defined"}
    else:
        specificity = {"value": None, "ci": None,
                       "status": f"undefined: the control patches' rise {rise['control_patches']:+.3f} has a "
                                 f"{CONFIDENCE:.0%} interval [{lo:+.3f}, {hi:+.3f}] that does not lie above 0"}
    return {"conditions": conditions, "specificity": specificity,
            "rise_difference_vs_controls": {"value": rise["target"] - rise["control_patches"],
                                            "ci": interval(target - control)},
            "rise_difference_vs_other": {"value": rise["target"] - rise["other_category"],
                                         "ci": interval(target - rise_draws["other_category"])}}
