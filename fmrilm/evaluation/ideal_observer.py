"""The ideal observer: the upper bound of decoding on synthetic data, from the simulator's own model.

It knows each subject's noise-free response to every candidate stimulus (``clean`` [S, M, V]) and
the single-trial noise sd per vertex (``noise_sd`` [S, V], z-units). An item's scan averages
``n_repeats`` trials, so its noise sd is ``noise_sd / sqrt(n_repeats)``; the log-likelihood of
candidate m for observed scan x is, up to a constant,

    LL[x, m] = -Σ_v (x_v - clean[m, v])² / σ_v²

with independent vertices. The simulator's noise is partly spatially correlated, so this diagonal
observer is near-ideal, not exactly ideal (the exact one needs the full V×V covariance).

Captions: the observer answers with a caption of the most likely candidate. Because a correct pick
would otherwise score its own reference, it answers with the candidate's last caption and is scored
against the other references.
"""

from __future__ import annotations

import numpy as np

from fmrilm.errors import InputError
from fmrilm.evaluation.retrieval_metrics import topk_hits


def log_likelihoods(scans: np.ndarray, clean: np.ndarray, noise_sd: np.ndarray, n_repeats: int) -> np.ndarray:
    """LL [N, M] of each candidate's clean response for each observed scan (see module docstring)."""
    sd = np.asarray(noise_sd, np.float64) / np.sqrt(max(int(n_repeats), 1))
    ok = np.isfinite(sd) & (sd > 0)
    if not ok.any():
        raise InputError("noise_sd", "values", "no vertex with a positive finite noise sd")
    w = 1.0 / sd[ok] ** 2
    x, c = np.asarray(scans, np.float64)[:, ok], np.asarray(clean, np.float64)[:, ok]
    return 2.0 * (x * w) @ c.T - (c * c * w).sum(1)[None] - (x * x * w).sum(1)[:, None]


def n_way_from_scores(scores: np.ndarray, n_way: int, n_draws: int, seed: int, ks=(1, 5)) -> dict:
    """MindEye n-way top-k accuracy from a square score matrix (row: scan, column: its candidate),
    both directions, with the same seeded draws as :func:`~fmrilm.evaluation.retrieval_metrics.n_way_retrieval`."""
    n = len(scores)
    n_way = min(n_way, n)
    rng = np.random.default_rng(seed)
    hits = {d: {k: [] for k in ks} for d in ("brain_to_caption", "caption_to_brain")}
    for _ in range(n_draws):
        pick = rng.choice(n, size=n_way, replace=False)
        sub = scores[np.ix_(pick, pick)]
        for d, matrix in (("brain_to_caption", sub), ("caption_to_brain", sub.T)):
            for k, hit in topk_hits(matrix, [k for k in ks if k <= n_way]).items():
                hits[d][k].append(hit.mean())
    out = {d: {f"top{k}": float(np.mean(v)) for k, v in per_k.items() if v} for d, per_k in hits.items()}
    out.update(n_way=n_way, n_draws=n_draws, n_items=n)
    return out


def ideal_observer(data, subjects, test_stimuli, scans_by_subject: dict, n_repeats: int, n_way: int,
                   n_draws: int, seed: int) -> dict:
    """Decoded candidate per test scan and the n-way retrieval of the observer, per subject averaged.

    Parameters
    ----------
    data : TaskData
        With simulator ground truth (``clean``, ``noise_sd``).
    subjects : list of int
    test_stimuli : ndarray of int
        The candidate bank (and the items).
    scans_by_subject : dict
        subject → averaged scans [len(test_stimuli), V] in `test_stimuli` order.

    Returns
    -------
    dict
        ``{"choice": {subject: candidate stimulus per item}, "retrieval": averaged n-way result}``.
    """
    noise = data.dataset.array("noise_sd")
    choice, per_subject = {}, []
    for s in subjects:
        clean = np.asarray(data.clean(s)[test_stimuli])
        ll = log_likelihoods(scans_by_subject[s], clean, noise[s], n_repeats)
        choice[s] = test_stimuli[np.argmax(ll, axis=1)]
        per_subject.append(n_way_from_scores(ll, n_way, n_draws, seed))
    retrieval = {d: {key: float(np.mean([r[d][key] for r in per_subject])) for key in per_subject[0][d]}
                 for d in ("brain_to_caption", "caption_to_brain")}
    retrieval.update({k: per_subject[0][k] for k in ("n_way", "n_draws", "n_items")})
    return {"choice": choice, "retrieval": retrieval}
