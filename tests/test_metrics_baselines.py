"""R² / phenotype scores by hand, temporal baselines on processes with known R², linear decoders."""

import numpy as np
import pytest

from fmrilm.errors import InputError
from fmrilm.evaluation.baselines import RidgeCaptionDecoder, fc_features, phenotype_baseline
from fmrilm.evaluation.regression import classification_scores, r2_score, regression_scores
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
    assert out == {"accuracy": 0.75, "n": 4, "auc": 0.75}
    assert classification_scores(["a", "b", "c"], ["a", "b", "b"])["auc"] is None
    reg = regression_scores([20.0, 30.0, 40.0], [22.0, 30.0, 37.0])
    assert reg["mae"] == pytest.approx(5 / 3) and reg["r2"] == pytest.approx(1 - 13 / 200)


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


def test_phenotype_baselines_recover_planted_effects():
    rng = np.random.default_rng(0)
    n, f = 160, 40
    x = rng.standard_normal((n, f))
    sex = np.where(x[:, 0] + 0.3 * rng.standard_normal(n) > 0, "M", "F")
    age = 50 + 10 * x[:, 1] + rng.standard_normal(n)
    cls = phenotype_baseline(x[:120], sex[:120], x[120:], sex[120:], "classification", seed=0)
    # Chance is 0.5; the planted feature separates the classes up to the label noise.
    assert cls["accuracy"] >= 0.7 and cls["auc"] >= 0.8 and len(cls["predictions"]) == 40
    reg = phenotype_baseline(x[:120], age[:120], x[120:], age[120:], "regression")
    assert reg["mae"] < 3.0 and reg["r2"] > 0.8
    with pytest.raises(InputError, match="task"):
        phenotype_baseline(x[:120], age[:120], x[120:], age[120:], "ranking")
