"""The decoding bounds: the ideal observer (full noise covariance by Woodbury) and the bank ceiling."""

import numpy as np
import pytest

from fmrilm.errors import InputError
from fmrilm.evaluation.ideal_observer import GaussianObserver, ideal_observer, log_likelihoods


def _low_rank_problem(rng, n_vertices, rank, correlated_share):
    """Independent variances d [V] and a factor U [V, R] whose part of the variance is `correlated_share`."""
    factor = rng.standard_normal((n_vertices, rank))
    factor *= np.sqrt(correlated_share / (factor**2).sum(1, keepdims=True))
    variance = (1.0 - correlated_share) * rng.uniform(0.5, 2.0, n_vertices)
    return variance, factor


def test_woodbury_log_likelihood_matches_a_dense_solve():
    rng = np.random.default_rng(0)
    variance, factor = _low_rank_problem(rng, 37, 5, 0.7)
    variance[[3, 11]] = [0.0, np.inf]  # no usable variance: left out (the rest's marginal likelihood)
    scans, clean = rng.standard_normal((6, 37)), rng.standard_normal((9, 37))
    observer = GaussianObserver(variance, factor, n_repeats=3)
    ll = observer.log_likelihoods(scans, clean, chunk=4)  # chunks of candidates must not matter

    keep = np.isfinite(variance) & (variance > 0)
    sigma = (np.diag(variance[keep]) + factor[keep] @ factor[keep].T) / 3
    diff = (scans[:, None] - clean[None])[..., keep]
    solved = np.linalg.solve(sigma, diff.reshape(-1, keep.sum()).T).T.reshape(diff.shape)
    dense = -np.einsum("nmv,nmv->nm", diff, solved)
    np.testing.assert_allclose(ll, dense, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(observer.quadratic(scans - clean[0]), -dense[:, 0], rtol=1e-10)
    np.testing.assert_allclose(observer.log_likelihoods(scans, clean, candidates=[8, 2]), dense[:, [8, 2]], rtol=1e-10)
    # the function form: noise_sd is the independent part's sd
    np.testing.assert_allclose(log_likelihoods(scans, clean, np.sqrt(variance), 3, factor), dense, rtol=1e-10)
    with pytest.raises(InputError, match="factor"):
        GaussianObserver(variance, factor[:10])
    with pytest.raises(InputError, match="variance"):
        GaussianObserver(np.zeros(37))


def test_full_covariance_observer_beats_the_diagonal_one_on_correlated_noise():
    rng = np.random.default_rng(1)
    n_vertices, n_candidates, n_repeats = 400, 200, 3
    variance, factor = _low_rank_problem(rng, n_vertices, 8, 0.9)
    clean = 0.05 * rng.standard_normal((n_candidates, n_vertices))
    truth = rng.integers(n_candidates, size=300)
    trials = [rng.standard_normal((truth.size, 8)) @ factor.T + rng.standard_normal((truth.size, n_vertices))
              * np.sqrt(variance) for _ in range(n_repeats)]
    scans = clean[truth] + np.mean(trials, axis=0)

    full = GaussianObserver(variance, factor, n_repeats).log_likelihoods(scans, clean)
    # the diagonal observer knows each vertex's total variance, not the correlations
    diagonal = GaussianObserver(variance + (factor**2).sum(1), None, n_repeats).log_likelihoods(scans, clean)
    full_top1 = (full.argmax(1) == truth).mean()
    diagonal_top1 = (diagonal.argmax(1) == truth).mean()
    assert full_top1 > 0.9 and diagonal_top1 < 0.5, (full_top1, diagonal_top1)


def test_ideal_observer_answers_from_the_training_bank(tiny_task_world):
    from fmrilm.brain.task_data import TaskData
    from fmrilm.evaluation.retrieval_metrics import n_way_from_scores

    data = TaskData(tiny_task_world)
    test, bank = np.arange(0, 120, 4), np.setdiff1d(np.arange(120), np.arange(0, 120, 4))
    scans = {s: data.mean_betas(s, test) for s in (0, 1)}
    n_repeats = int(data.trial_repeat.max()) + 1
    out = ideal_observer(data, [0, 1], test, bank, scans, n_repeats, n_way=300, n_draws=30, seed=0)
    for s in (0, 1):
        assert out["choice"][s].shape == test.shape and np.isin(out["choice"][s], bank).all()
    captions = [data.stimuli[m]["captions"][0] for m in test]
    retrieval = out["retrieval"]
    assert (retrieval["n_way"], retrieval["n_draws"], retrieval["n_distinct"]) == (len(set(captions)), 1,
                                                                                   len(set(captions)))
    assert retrieval["n_subjects"] == 2 and retrieval["brain_to_caption"]["top1"] > 0.8

    # with the test stimuli in the bank, the most likely stimulus is nearly always the one shown
    every = ideal_observer(data, [0], test, np.arange(120), scans, n_repeats, n_way=300, n_draws=30, seed=0)
    assert (every["choice"][0] == test).mean() > 0.8
    # the full covariance does at least as well as the diagonal (total variance) observer
    d, u = data.noise_covariance(0)
    diagonal = GaussianObserver(d + (u**2).sum(1), None, n_repeats).log_likelihoods(scans[0], data.clean(0), test)
    diagonal_top1 = n_way_from_scores(diagonal, 300, 30, groups=captions)["brain_to_caption"]["top1"]
    full = GaussianObserver(d, u, n_repeats).log_likelihoods(scans[0], data.clean(0), test)
    assert n_way_from_scores(full, 300, 30, groups=captions)["brain_to_caption"]["top1"] >= diagonal_top1


def test_bank_ceiling_is_the_best_bank_caption_by_semscore():
    from fmrilm.evaluation.captions import semscore
    from fmrilm.evaluation.retrieval_eval import bank_ceiling

    references = [["a dog runs on the beach", "a brown dog at the sea", "a dog near the water"],
                  ["two people eat pizza in a kitchen", "a family shares a meal"],
                  "a red bus on a city street",
                  ["a cat sleeps on a bed", "a kitten lying on a blanket", "a cat in a bedroom", "a sleepy cat"]]
    bank = ["a dog on the sand", "people eating dinner", "a bus parked on a road", "a cat on a sofa",
            "a plate of food", "a dog on the sand", "a train at a platform", "a kitten in bed"]
    out = bank_ceiling(references, bank)
    brute = np.array([[semscore([caption], [refs])["semscore"] for caption in bank] for refs in references])
    np.testing.assert_allclose(out["per_item"], brute.max(1), atol=1e-5)
    assert out["semscore"] == pytest.approx(brute.max(1).mean(), abs=1e-5) and out["n"] == len(references)
    assert out["best"] == [bank[j] for j in brute.argmax(1)]
    with pytest.raises(InputError, match="bank"):
        bank_ceiling(references, [])
