"""Bootstrap intervals of the targets' paired comparisons, against cases computed by hand."""

import numpy as np
import pytest

from fmrilm.errors import InputError
from fmrilm.evaluation.uncertainty import paired_difference_ci, paired_ratio_ci


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
