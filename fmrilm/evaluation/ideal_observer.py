"""The ideal observer: the upper bound of decoding on synthetic data, from the simulator's own model.

It knows each subject's noise-free response to every stimulus (``clean`` [S, M, V]) and the full
covariance of the noise (:meth:`~fmrilm.brain.task_data.TaskData.noise_covariance`): single trial,
in the betas' z-units, ``Σ = D + U Uᵀ`` with ``D`` diagonal (the independent part) and ``U``
[V, R] the low-rank correlated part (R ≪ V). An item's scan averages ``n_repeats`` independent
trials, so its noise covariance is ``Σ / n_repeats``. The score of candidate m for a scan x is

    LL[x, m] = -(x - c_m)ᵀ (Σ / n_repeats)⁻¹ (x - c_m)

twice the gaussian log-likelihood up to a constant shared by all candidates, so its argmax is the
most likely candidate (the Bayes pick under a uniform prior). The V×V inverse is never formed:
by Woodbury, ``Σ⁻¹ = D⁻¹ - D⁻¹U K⁻¹ UᵀD⁻¹`` with ``K = I + UᵀD⁻¹U = L Lᵀ``, so the quadratic
form is ``‖y‖²_{D⁻¹} - ‖P y‖²`` with ``P = L⁻¹ UᵀD⁻¹`` [R, V]. Vertices without a positive
finite variance are left out: the remaining vertices' likelihood is then exactly the marginal.

What this assumes (the simulator's definitions, :mod:`fmrilm.brain.encoding_model`): scans and
``clean`` are on the same z-scale, i.e. session z-scoring subtracts the expected mean (0) and
divides by the expected total sd; each session estimates both from its ~750 trials, so the
observer is exact up to that estimation (a few % in scale) and the small correlation the
session mean induces between trials.

Two uses of the same scans:

- captions: the candidates are the training bank, the stimuli the ridge decoder and retrieval
  heads train on, so the observer picks from the same bank as the model and the ridge decoder and
  answers with the chosen stimulus's first caption (the text the ridge decoder returns for it),
  scored against all references like every other condition;
- retrieval: n-way over the test stimuli themselves (:func:`n_way_from_scores`, candidates with
  distinct captions), an additional bound for the retrieval section.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import solve_triangular

from fmrilm.errors import InputError, check_finite
from fmrilm.evaluation.retrieval_metrics import average_results, n_way_from_scores


class GaussianObserver:
    """Scores clean responses under gaussian noise ``N(0, (diag(variance) + factor factorᵀ) / n_repeats)``.

    Parameters
    ----------
    variance : float [V]
        Single-trial variance of the independent part of the noise.
    factor : float [V, R], optional
        Low-rank factor of the correlated part; None for independent vertices (the diagonal observer).
    n_repeats : int
        Trials averaged per scan.
    """

    def __init__(self, variance, factor=None, n_repeats: int = 1):
        n = max(int(n_repeats), 1)
        d = np.asarray(variance, np.float64) / n
        self.keep = np.isfinite(d) & (d > 0)
        if not self.keep.any():
            raise InputError("noise", "variance", "no vertex with a positive finite noise variance")
        self.precision = 1.0 / d[self.keep]
        if factor is None:
            self.project = np.zeros((0, int(self.keep.sum())))
            return
        u = np.asarray(factor, np.float64)
        if u.ndim != 2 or u.shape[0] != d.size:
            raise InputError("noise", "factor", f"{u.shape}; expected [{d.size}, R]")
        check_finite(u, "noise factor")
        u = u[self.keep] / np.sqrt(n)  # Σ/n = D/n + (U/√n)(U/√n)ᵀ
        weighted = u * self.precision[:, None]  # D⁻¹U
        chol = np.linalg.cholesky(np.eye(u.shape[1]) + u.T @ weighted)
        self.project = solve_triangular(chol, weighted.T, lower=True)  # P = L⁻¹ UᵀD⁻¹, [R, V_kept]

    def quadratic(self, y) -> np.ndarray:
        """``yᵀ Σ⁻¹ y`` of each row of ``y`` [N, V] (Σ for the averaged scan)."""
        y = np.asarray(y, np.float64)[:, self.keep]
        return (y * y * self.precision).sum(1) - ((y @ self.project.T) ** 2).sum(1)

    def log_likelihoods(self, scans, clean, candidates=None, chunk: int = 512) -> np.ndarray:
        """LL [N, M] of each candidate for each scan (module docstring).

        Parameters
        ----------
        scans : float [N, V]
        clean : float [M_all, V]
            Clean responses (a memmap is fine: candidates are read `chunk` at a time).
        candidates : int array [M], optional
            Rows of `clean` to score; default all.
        """
        x = np.asarray(scans, np.float64)[:, self.keep]
        xw, px = x * self.precision, x @ self.project.T
        xx = (x * xw).sum(1) - (px * px).sum(1)
        rows = np.arange(len(clean)) if candidates is None else np.asarray(candidates, np.int64)
        out = np.empty((len(x), rows.size))
        # The expanded form |x|² - 2x·c + |c|² in the Σ⁻¹ metric: two matrix products per chunk.
        for start in range(0, rows.size, chunk):
            c = np.asarray(clean[rows[start:start + chunk]], np.float64)[:, self.keep]
            pc = c @ self.project.T
            cc = (c * c * self.precision).sum(1) - (pc * pc).sum(1)
            out[:, start:start + len(c)] = 2.0 * (xw @ c.T - px @ pc.T) - cc[None] - xx[:, None]
        return out


def log_likelihoods(scans, clean, noise_sd, n_repeats: int, factor=None) -> np.ndarray:
    """LL [N, M] of each candidate's clean response for each observed scan (module docstring).

    `noise_sd` [V] is the single-trial sd of the independent part of the noise (all of it when
    `factor` [V, R], the correlated part, is None)."""
    return GaussianObserver(np.asarray(noise_sd, np.float64) ** 2, factor, n_repeats).log_likelihoods(scans, clean)


def ideal_observer(data, subjects, test_stimuli, bank_stimuli, scans_by_subject: dict, n_repeats: int,
                   n_way: int, n_draws: int, seed: int) -> dict:
    """Most likely bank stimulus per test scan, and the observer's n-way retrieval, per subject averaged.

    Parameters
    ----------
    data : TaskData
        With simulator ground truth (``clean``, the noise covariance).
    subjects : list of int
    test_stimuli : ndarray of int
        The items (and the retrieval candidates).
    bank_stimuli : ndarray of int
        The caption candidates: the training stimuli the ridge decoder's bank captions come from.
    scans_by_subject : dict
        subject → averaged scans [len(test_stimuli), V] in `test_stimuli` order.
    n_repeats : int
        Trials averaged per scan.
    n_way, n_draws, seed
        The retrieval protocol (:func:`~fmrilm.evaluation.retrieval_metrics.n_way_retrieval`).

    Returns
    -------
    dict
        ``{"choice": {subject: bank stimulus per test stimulus}, "retrieval": averaged n-way result}``.
    """
    bank_stimuli, test_stimuli = np.asarray(bank_stimuli, np.int64), np.asarray(test_stimuli, np.int64)
    if bank_stimuli.size == 0:
        raise InputError("ideal_observer", "bank_stimuli", "empty caption bank")
    captions = [data.stimuli[m]["captions"][0] for m in test_stimuli]
    choice, per_subject = {}, []
    for s in subjects:
        observer = GaussianObserver(*data.noise_covariance(s), n_repeats=n_repeats)
        clean, scans = data.clean(s), scans_by_subject[s]
        choice[s] = bank_stimuli[np.argmax(observer.log_likelihoods(scans, clean, bank_stimuli), axis=1)]
        per_subject.append(n_way_from_scores(observer.log_likelihoods(scans, clean, test_stimuli), n_way, n_draws,
                                             seed, groups=captions))
    return {"choice": choice, "retrieval": average_results(per_subject)}
