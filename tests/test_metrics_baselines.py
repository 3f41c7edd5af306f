"""R² / phenotype scores by hand, temporal baselines on processes with known R², linear decoders."""

import numpy as np
import pytest

from fmrilm.errors import InputError
from fmrilm.evaluation.baselines import (
    RidgeCaptionDecoder,
    chance_baseline,
    fc_features,
    network_fc_features,
    phenotype_baseline,
)
from fmrilm.evaluation.regression import balanced_accuracy, classification_scores, r2_score, regression_scores, roc_auc
from fmrilm.evaluation.temporal_baselines import LinearAR, next_scan_targets, persistence_forecast, temporal_baselines


def test_r2_by_hand():
    y = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    assert r2_score(y, y) == 1.0
    assert r2_score(y, np.broadcast_to(y.mean(0), y.shape)) == 0.0
    # Pooled: residuals 1 in each cell of column 0 only → 1 - 3 / (2 + 200).
    assert r2_score(y, y + [[1, 0]] * 3) == pytest.approx(1 - 3 / 202)
    with pytest.raises(InputError, match="zero variance"):
        r2_score(np.ones((3, 2)), np.zeros((3, 2)))
    with pytest.raises(InputError, match="do not match"):
        r2_score(y, y[:2])


def test_phenotype_scores_by_hand():
    out = classification_scores(["F", "M", "M", "F"], ["F", "M", "F", "F"], y_score=[0.1, 0.9, 0.4, 0.6])
    # Accuracy 3/4. AUC for "M": pairs (M, F) = (0.9 > 0.1, 0.9 > 0.6, 0.4 > 0.1, 0.4 < 0.6) → 3/4.
    # Balanced: recall F = 2/2, recall M = 1/2 → 3/4.
    assert {k: out[k] for k in ("accuracy", "n", "auc", "balanced_accuracy")} == \
        {"accuracy": 0.75, "n": 4, "auc": 0.75, "balanced_accuracy": 0.75}
    for name in ("accuracy", "balanced_accuracy", "auc"):
        low, high = out["ci95"][name]
        assert 0.0 <= low <= out[name] <= high <= 1.0
    three = classification_scores(["a", "b", "c"], ["a", "b", "b"])
    assert three["auc"] is None and three["ci95"]["auc"] is None
    # 6 "a" all right, 2 "b" all wrong: accuracy 0.75 but balanced accuracy (1 + 0) / 2
    assert classification_scores(list("aaaaaabb"), list("aaaaaaaa"))["balanced_accuracy"] == 0.5
    reg = regression_scores([20.0, 30.0, 40.0], [22.0, 30.0, 37.0])
    assert reg["mae"] == pytest.approx(5 / 3) and reg["r2"] == pytest.approx(1 - 13 / 200)
    # errors 2, 0, 3: a resampled mean error lies between 0 and 3
    assert 0.0 <= reg["ci95"]["mae"][0] <= reg["mae"] <= reg["ci95"]["mae"][1] <= 3.0


def test_vectorised_auc_and_balanced_accuracy_match_sklearn():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(0)
    truth = rng.random((5, 30)) < 0.4
    score = np.round(rng.random((5, 30)) + truth, 1)  # rounded: ties
    pred = rng.random((5, 30)) < 0.5
    for t, s, p, auc, bal in zip(truth, score, pred, roc_auc(truth, score), balanced_accuracy(truth, pred)):
        assert auc == pytest.approx(roc_auc_score(t, s)) and bal == pytest.approx(balanced_accuracy_score(t, p))
    assert np.isnan(roc_auc(np.ones(4, bool), np.arange(4.0)))  # one class: undefined


def test_chance_baseline_takes_the_constant_from_the_training_subjects():
    # the test subjects are mostly "F", the training ones mostly "M": the majority guess is "M"
    cls = chance_baseline(["M", "M", "F"], ["F", "F", "F", "M"], "classification")
    assert cls["label"] == "M" and cls["accuracy"] == 0.25
    assert cls["balanced_accuracy"] == 0.5 and cls["auc"] == 0.5  # constant score: chance AUC
    reg = chance_baseline([20.0, 40.0], [10.0, 30.0, 50.0], "regression")
    assert reg["value"] == 30.0 and reg["mae"] == pytest.approx(40 / 3) and reg["ci95"]["mae"][1] <= 20.0
    with pytest.raises(InputError, match="task"):
        chance_baseline([1.0], [1.0], "ranking")


def ar1(n_subjects, n_time, coef, seed):
    """Stationary AR(1) per parcel, x_t = coef · x_{t-1} + e_t, 4 parcels."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n_subjects, n_time + 100, 4))
    for t in range(1, x.shape[1]):
        x[:, t] = coef * x[:, t - 1] + rng.standard_normal((n_subjects, 4))
    return x[:, 100:]  # drop the burn-in


def test_temporal_baselines_reach_the_theoretical_r2():
    # For AR(1) with coefficient a: persistence R² = 2a - 1 and the optimal predictor's R² = a².
    train, test = ar1(4, 1500, 0.5, seed=0), ar1(4, 1500, 0.5, seed=1)
    for mode in ("per_parcel", "multivariate"):
        out = temporal_baselines(train, test, order=1, mode=mode)
        assert out["persistence"] == pytest.approx(0.0, abs=0.04)
        assert out["linear_ar"] == pytest.approx(0.25, abs=0.04)
        assert out["n_targets"] == 4 * 1499
    model = LinearAR(order=2).fit(train)
    np.testing.assert_allclose(model.coef, [[0.5, 0.0]] * 4, atol=0.05)


def test_lags_and_targets_line_up():
    series = np.arange(2 * 5 * 3, dtype=float).reshape(2, 5, 3)
    targets = next_scan_targets(series, order=2)
    assert targets.shape == (6, 3)
    np.testing.assert_array_equal(targets[0], series[0, 2])
    np.testing.assert_array_equal(persistence_forecast(series, order=2)[0], series[0, 1])
    with pytest.raises(InputError, match="order"):
        next_scan_targets(series, order=5)
    with pytest.raises(InputError, match="parcels"):
        LinearAR().fit(series).predict(series[..., :2])


def test_ridge_decoder_finds_the_right_caption():
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((120, 10))
    text = latent @ rng.standard_normal((10, 384))
    text = (text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float32)
    # 500 "vertices" linearly driven by the latent scene plus noise: more features than samples.
    brain = latent @ rng.standard_normal((10, 500)) + 0.5 * rng.standard_normal((120, 500))
    decoder = RidgeCaptionDecoder().fit(brain[:100], text[:100])
    bank = [f"caption {i}" for i in range(120)]
    decoded = decoder.decode(brain[100:], bank, text)
    assert np.mean([d == f"caption {100 + i}" for i, d in enumerate(decoded)]) >= 0.7
    np.testing.assert_allclose(np.linalg.norm(decoder.predict(brain[:3]), axis=1), 1.0, atol=1e-5)
    with pytest.raises(InputError, match="shape"):
        decoder.predict(brain[:3, :20])


def test_fc_features_are_fisher_z_upper_triangles():
    ts = np.random.default_rng(0).standard_normal((3, 50, 6))
    fc = fc_features(ts)
    assert fc.shape == (3, 15)
    r = np.corrcoef(ts[1].T)[np.triu_indices(6, 1)]
    np.testing.assert_allclose(fc[1], np.arctanh(r), atol=1e-5)


def test_network_fc_features_are_block_means_of_fisher_z():
    # networks of unequal size (3, 2, 2, 2, 2, 2, 4 parcels); in subject 1, network 2 shares a signal
    nets = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 6, 6])
    rng = np.random.default_rng(1)
    ts = rng.standard_normal((2, 80, 17))
    ts[1][:, nets == 2] += 2.0 * rng.standard_normal((80, 1))
    features = network_fc_features(ts, nets)
    assert features.shape == (2, 28)  # 7 within + 21 between, row-major upper triangle: (2, 2) is entry 13
    r = np.corrcoef(ts[1].T)
    np.testing.assert_allclose(features[1, 13], np.arctanh(r[5, 6]), rtol=1e-5)
    np.testing.assert_allclose(features[1, 2], np.arctanh(r[np.ix_([0, 1, 2], [5, 6])]).mean(), rtol=1e-5)  # (0, 2)
    assert features[1, 13] > 1.0 > abs(features[0, 13])  # the shared signal is network 2's within FC
    with pytest.raises(InputError, match="network labels"):
        network_fc_features(ts, nets[:-1])


def test_phenotype_baselines_recover_planted_effects():
    rng = np.random.default_rng(0)
    n, f = 160, 40
    x = rng.standard_normal((n, f))
    sex = np.where(x[:, 0] + 0.3 * rng.standard_normal(n) > 0, "M", "F")
    age = 50 + 10 * x[:, 1] + rng.standard_normal(n)
    cls = phenotype_baseline(x[:120], sex[:120], x[120:], sex[120:], "classification", seed=0)
    # Chance is 0.5; the planted feature separates the classes up to the label noise.
    assert cls["accuracy"] >= 0.7 and cls["auc"] >= 0.8 and len(cls["predictions"]) == 40
    assert cls["ci95"]["auc"][0] > 0.5  # above chance beyond the resampling noise of 40 subjects
    reg = phenotype_baseline(x[:120], age[:120], x[120:], age[120:], "regression")
    assert reg["mae"] < 3.0 and reg["r2"] > 0.8
    with pytest.raises(InputError, match="task"):
        phenotype_baseline(x[:120], age[:120], x[120:], age[120:], "ranking")
