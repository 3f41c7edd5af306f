"""The rest population's ideal observer: whole-run likelihood with the true class covariances."""

import numpy as np
import pytest
from tiny_configs import tiny_config

from fmrilm.brain.rest_world import RestPopulation, RestWorldConfig
from fmrilm.config import load_config
from fmrilm.errors import InputError
from fmrilm.evaluation.baselines import fc_features, phenotype_baseline
from fmrilm.evaluation.regression import classification_scores
from fmrilm.evaluation.rest_ideal_observer import ideal_observer


@pytest.fixture(scope="module")
def population():
    cfg = load_config(RestWorldConfig, tiny_config("rest_world_tiny"),
                      ["n_subjects=40", "n_timepoints=120"])
    for effect in cfg.effects:
        effect.delta *= 2.0  # room to measure at 40 subjects
    pop = RestPopulation(cfg)
    rows, series = zip(*(pop.subject(i) for i in range(cfg.n_subjects)))
    return pop, list(rows), np.stack(series)


def test_ideal_observer_beats_the_fc_baseline_on_held_out_subjects(population):
    pop, rows, series = population
    train, test = slice(0, 24), slice(24, None)
    truth = [r["sex"] for r in rows[test]]
    observed = ideal_observer(pop, rows[test], series[test], "sex")
    io_accuracy = np.mean(np.array(observed["predictions"]) == truth)
    fc = fc_features(series)
    baseline = phenotype_baseline(fc[train], [r["sex"] for r in rows[train]], fc[test], truth, "classification")
    assert io_accuracy >= baseline["accuracy"] and io_accuracy >= 0.8
    assert all(0.0 <= p <= 1.0 for p in observed["probabilities"])
    # the probabilities are of the class classification_scores calls positive: a good observer's AUC > 0.5
    scores = classification_scores(truth, observed["predictions"], observed["probabilities"])
    assert scores["auc"] >= 0.8


def test_age_posterior_mean_beats_the_constant_and_stays_in_range(population):
    pop, rows, series = population
    ages = np.array([r["age"] for r in rows])
    predicted = np.array(ideal_observer(pop, rows, series, "age")["predictions"])
    assert ((predicted >= pop.cfg.age_range[0]) & (predicted <= pop.cfg.age_range[1])).all()
    assert np.abs(predicted - ages).mean() < np.abs(ages.mean() - ages).mean()


def test_site_posterior_weighs_each_sites_scale_and_noise(population):
    pop, rows, series = population
    observed = ideal_observer(pop, rows, series, "site")
    truth = [r["site"] for r in rows]
    assert len(set(truth)) == 2 and set(observed["predictions"]) <= {s["site"] for s in pop.sites}
    # the raw run carries the site's per-parcel offset and gain: the observer is near perfect
    assert np.mean(np.array(observed["predictions"]) == truth) >= 0.95
    # and without them (runs z-scored per parcel, as the tokenizer sees them) the posterior must fall
    z = (series - series.mean(1, keepdims=True)) / series.std(1, keepdims=True)
    assert np.mean(np.array(ideal_observer(pop, rows, z, "site")["predictions"]) == truth) < 0.95


def test_unknown_phenotype_and_site_are_refused(population):
    pop, rows, series = population
    with pytest.raises(InputError, match="expected age"):
        ideal_observer(pop, rows[:2], series[:2], "handedness")
    with pytest.raises(InputError, match="site"):
        ideal_observer(pop, [{**rows[0], "site": "site-9"}], series[:1], "sex")
