"""Bootstrap intervals of the targets' paired comparisons, against cases computed by hand."""

import numpy as np
import pytest
from scipy.stats import bootstrap

from fmrilm.errors import InputError
from fmrilm.evaluation.uncertainty import paired_difference_ci, paired_ratio_ci, resampled_ci


def test_a_constant_shift_has_a_zero_width_difference_interval():
    base = np.linspace(0.1, 0.6, 37)
    low, high = paired_difference_ci(base + 0.25, base)
    assert low == pytest.approx(0.25) and high == pytest.approx(0.25)


def test_a_proportional_model_has_a_zero_width_ratio_interval():
    control = np.random.default_rng(0).uniform(0.2, 0.4, 50)
    low, high = paired_ratio_ci(2 * control, control)
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)


def test_ratio_interval_covers_the_estimate_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    widths = []
    for n in (40, 640):
        model, control = rng.random(n) < 0.5, rng.random(n) < 0.25  # hits: true ratio 2
        low, high = paired_ratio_ci(model, control, seed=3)
        assert low <= model.mean() / control.mean() <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 4x narrower for 16x the items


def test_pairing_matters_when_scores_move_together():
    # model = control + small noise per item: the paired difference is tight although both vary a lot
    rng = np.random.default_rng(2)
    control = rng.uniform(0, 1, 200)
    model = control + 0.05 + rng.normal(0, 0.01, 200)
    low, high = paired_difference_ci(model, control)
    assert 0.045 < low < 0.05 < high < 0.055


def test_same_seed_same_interval():
    a, b = np.arange(1, 21) % 3 == 0, np.arange(1, 21) % 4 == 0
    assert paired_ratio_ci(a, b, seed=5) == paired_ratio_ci(a, b, seed=5)


@pytest.mark.parametrize(("model", "control", "problem"), [
    ([1.0, 0.5], [0.5], "same n"),
    ([1.0], [1.0], "same n"),
    ([1.0, np.nan], [0.5, 0.5], "finite"),
])
def test_bad_input_names_the_problem(model, control, problem):
    with pytest.raises(InputError, match=problem):
        paired_difference_ci(model, control)


def test_a_control_that_never_scores_has_no_ratio():
    with pytest.raises(InputError, match="control"):
        paired_ratio_ci([1, 0, 1], [0, 0, 0])


def test_two_clusters_give_the_clusters_own_statistics_as_bounds():
    # Resampling 2 clusters draws {A, A}, {A, B} or {B, B} (¼, ½, ¼): ratios 2/2 = 1, 5/3 and 3/1 = 3,
    # so the 2.5 % and 97.5 % quantiles are the two single-cluster ratios.
    model, control, clusters = [1.0, 1.0, 3.0], [1.0, 1.0, 1.0], ["A", "A", "B"]
    assert paired_ratio_ci(model, control, clusters=clusters) == pytest.approx((1.0, 3.0))
    # Differences 0, 0, 0 in the 3-item cluster and 1 in the 1-item one: {A, A} → 0, {B, B} → 1,
    # and the pooled mean over items, not clusters: {A, B} → 1/4.
    low, high = paired_difference_ci([0.5, 0.5, 0.5, 1.0], [0.5, 0.5, 0.5, 0.0], clusters=[7, 7, 7, 2])
    assert (low, high) == pytest.approx((0.0, 1.0))


def test_items_duplicated_within_clusters_widen_the_interval():
    rng = np.random.default_rng(4)
    control = rng.uniform(0.2, 0.4, 40)
    model = control + rng.normal(0.05, 0.05, 40)
    # every stimulus seen by 5 subjects that score it alike: 200 items but 40 independent draws
    a, b, stimulus = np.repeat(model, 5), np.repeat(control, 5), np.repeat(np.arange(40), 5)
    for interval in (paired_difference_ci, paired_ratio_ci):
        naive = np.subtract(*interval(a, b)[::-1])
        clustered = np.subtract(*interval(a, b, clusters=stimulus)[::-1])
        assert clustered > 1.8 * naive  # ~sqrt(5) = 2.2 wider
        # ... and as wide as the item interval of the 40 distinct items
        assert clustered == pytest.approx(np.subtract(*interval(model, control)[::-1]), rel=0.15)


def test_without_clusters_items_are_resampled_as_before():
    rng = np.random.default_rng(5)
    model, control = rng.random(30), rng.random(30)
    scipy_result = bootstrap((model, control), lambda x, y, axis=-1: (x - y).mean(axis=axis), paired=True,
                             vectorized=True, n_resamples=2000, method="percentile", rng=np.random.default_rng(0))
    assert paired_difference_ci(model, control) == tuple(scipy_result.confidence_interval)
    # one item per cluster is the item bootstrap, up to Monte-Carlo error
    low, high = paired_difference_ci(model, control, clusters=np.arange(30)[::-1])
    assert (low, high) == pytest.approx(paired_difference_ci(model, control), abs=0.02)


def test_a_resample_without_control_hits_is_an_unbounded_ratio():
    # 1 of 3 clusters holds all control hits: a third of resamples miss it (ratio = inf)
    low, high = paired_ratio_ci([1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], clusters=[0, 0, 1, 1, 2, 2])
    assert low == pytest.approx(1.0) and high == np.inf


@pytest.mark.parametrize(("clusters", "problem"), [([0, 1], "labels"), ([3, 3, 3], "single cluster")])
def test_bad_clusters_are_refused(clusters, problem):
    with pytest.raises(InputError, match=problem):
        paired_difference_ci([1.0, 0.5, 0.2], [0.5, 0.5, 0.1], clusters=clusters)


def test_resampled_ci_of_a_mean_and_of_an_undefined_statistic():
    values = np.arange(10.0)
    low, high = resampled_ci(lambda rows: values[rows].mean(-1), len(values))
    assert low < 4.5 < high and high - low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(10), rel=0.2)
    assert resampled_ci(lambda rows: np.full(len(rows), np.nan), 5) is None
