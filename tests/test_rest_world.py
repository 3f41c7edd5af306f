"""Synthetic rest population: layout, determinism, FC realism, planted effects, autocorrelation,
vertex expansion and config validation."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_configs import tiny_config

from fmrilm.brain.atlas import Atlas
from fmrilm.brain.rest_covariance import block_mean, nearest_correlation
from fmrilm.brain.rest_world import (
    RestPopulation,
    RestWorldConfig,
    expand_to_vertices,
    generate_rest_population,
)
from fmrilm.brain.store import Dataset
from fmrilm.config import load_config
from fmrilm.errors import InputError

UPPER = np.triu_indices(100, 1)


def tiny(**overrides) -> RestWorldConfig:
    return load_config(RestWorldConfig, tiny_config("rest_world_tiny"), [f"{k}={v}" for k, v in overrides.items()])


def correlations(timeseries: np.ndarray) -> np.ndarray:
    """Per-subject FC (S, P, P) of time series (S, T, P)."""
    x = timeseries - timeseries.mean(1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.einsum("stp,stq->spq", x, x)


@pytest.fixture(scope="module")
def atlas() -> Atlas:
    return Atlas.schaefer(100)


@pytest.fixture(scope="module")
def population(tmp_path_factory) -> Dataset:
    """A demo-sized population (200 subjects x 160 TRs), written through the real writer."""
    cfg = load_config(RestWorldConfig, "rest_world_demo", ["n_subjects=200", "seed=7"])
    return Dataset(generate_rest_population(cfg, tmp_path_factory.mktemp("rest") / "pop"), kind="rest")


@pytest.fixture(scope="module")
def population_fc(population) -> np.ndarray:
    return correlations(np.asarray(population.array("timeseries"), np.float64))


def test_tiny_layout_and_manifest(tmp_path):
    cfg = tiny()
    ds = Dataset(generate_rest_population(cfg, tmp_path / "tiny"), kind="rest")
    ts = ds.array("timeseries")
    assert ts.shape == (24, 40, 100) and ts.dtype == np.float32
    assert np.isfinite(ts).all()
    rows = ds.table("subjects")
    assert [r["subject"] for r in rows] == [f"sub-{i:04d}" for i in range(1, 25)]
    for row in rows:
        assert set(row) == {"subject", "age", "sex", "diagnosis", "site"}
        assert 45.0 <= row["age"] <= 80.0 and isinstance(row["age"], float)
        assert row["sex"] in ("F", "M") and row["diagnosis"] in ("control", "patient")
        assert row["site"] in ("site-1", "site-2")
    m = ds.manifest
    assert (m["tr"], m["n_subjects"], m["n_timepoints"], m["source"]) == (2.0, 24, 40, "synthetic")
    assert [(e["phenotype"], tuple(e["networks"]), e["delta"]) for e in m["phenotype_effects"]] == \
        [(e.phenotype, tuple(e.networks), e.delta) for e in cfg.effects]
    assert m["phenotype_effects"][0]["n_edges"] == 24 * 23 // 2  # Default has 24 parcels
    assert [s["site"] for s in m["site_effects"]] == ["site-1", "site-2"]
    # The saved config reloads to the same config.
    assert load_config(RestWorldConfig, ds.path / "config.yaml") == cfg


def test_deterministic_for_a_seed_and_prefix_stable(tmp_path):
    a = Dataset(generate_rest_population(tiny(), tmp_path / "a"))
    b = Dataset(generate_rest_population(tiny(), tmp_path / "b"))
    other = Dataset(generate_rest_population(tiny(seed=1), tmp_path / "c"))
    shorter = Dataset(generate_rest_population(tiny(n_subjects=5), tmp_path / "d"))
    assert np.array_equal(a.array("timeseries"), b.array("timeseries"))
    assert a.table("subjects") == b.table("subjects")
    assert not np.allclose(a.array("timeseries"), other.array("timeseries"))
    # Subject i does not depend on how many subjects are drawn (per-subject random streams).
    assert np.array_equal(a.array("timeseries")[:5], shorter.array("timeseries"))
    assert a.table("subjects")[:5] == shorter.table("subjects")


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    out = generate_rest_population(tiny(n_subjects=2), tmp_path / "x")
    before = Dataset(out).array("timeseries").copy()
    with pytest.raises(InputError, match="already exists"):
        generate_rest_population(tiny(n_subjects=3), out)
    assert np.array_equal(Dataset(out).array("timeseries"), before)
    generate_rest_population(tiny(n_subjects=3), out, overwrite=True)
    assert Dataset(out).array("timeseries").shape[0] == 3


def test_mean_fc_follows_hcp_group_fc(population_fc):
    from brainspace.datasets import load_group_fc

    hcp = load_group_fc("schaefer", scale=100)
    r_mean = np.corrcoef(population_fc.mean(0)[UPPER], hcp[UPPER])[0, 1]
    r_single = np.corrcoef(population_fc[0][UPPER], hcp[UPPER])[0, 1]
    assert r_mean > 0.9
    assert r_single > 0.5  # one 160-TR subject is noisy but still recognisably HCP-like


def test_planted_effects_have_the_right_sign(population, population_fc, atlas):
    rows = population.table("subjects")
    networks = np.array([p.network for p in atlas.parcels])
    female = np.array([r["sex"] == "F" for r in rows])
    patient = np.array([r["diagnosis"] == "patient" for r in rows])
    age = np.array([r["age"] for r in rows])
    assert 0.3 < female.mean() < 0.7 and 0.15 < patient.mean() < 0.45

    default = block_mean(population_fc, networks, "Default", "Default")
    assert default[female].mean() - default[~female].mean() > 0.04
    sommot_vis = block_mean(population_fc, networks, "SomMot", "Vis")
    assert np.corrcoef(age, sommot_vis)[0, 1] < -0.3
    default_cont = block_mean(population_fc, networks, "Default", "Cont")
    assert default_cont[patient].mean() - default_cont[~patient].mean() < -0.04
    # An unplanted block shows no sex difference beyond noise.
    vis = block_mean(population_fc, networks, "Vis", "Vis")
    assert abs(vis[female].mean() - vis[~female].mean()) < 0.03


def test_sex_is_decodable_from_fc_but_not_trivially(population, population_fc):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    female = np.array([r["sex"] == "F" for r in population.table("subjects")])
    features = np.arctanh(np.clip(population_fc[:, UPPER[0], UPPER[1]], -0.999, 0.999))
    features = (features - features.mean(0)) / features.std(0)
    accuracy = cross_val_score(LogisticRegression(max_iter=2000), features, female, cv=5).mean()
    assert 0.65 < accuracy < 0.98


def test_lag1_autocorrelation_in_configured_range(population):
    x = np.asarray(population.array("timeseries"), np.float64)
    x = x - x.mean(1, keepdims=True)
    lag1 = ((x[:, 1:] * x[:, :-1]).sum(1) / (x * x).sum(1)).mean(1)  # per subject, over parcels
    low, high = population.manifest["temporal_model"]["rho_range"]
    assert low - 0.05 < lag1.mean() < high
    # Finite runs bias lag-1 estimates down a little; allow for it at the low end.
    assert (lag1 > low - 0.1).all() and (lag1 < high + 0.05).all()


def test_site_offsets_and_gains_are_applied(population):
    rows = population.table("subjects")
    ts = np.asarray(population.array("timeseries"), np.float64)
    for site in population.manifest["site_effects"]:
        members = np.array([r["site"] == site["site"] for r in rows])
        assert np.allclose(ts[members].mean((0, 1)), site["offset"], atol=0.1)
        assert np.allclose(ts[members].std(1).mean(0), site["gain"], rtol=0.1)


def test_population_subject_matches_written_data(population, atlas):
    cfg = load_config(RestWorldConfig, population.path / "config.yaml")
    row, series = RestPopulation(cfg, atlas).subject(3)
    assert row == population.table("subjects")[3]
    assert np.array_equal(series, population.array("timeseries")[3])


def test_expand_to_vertices_parcellates_back(population, atlas):
    ts = np.asarray(population.array("timeseries")[0])
    vertices = expand_to_vertices(ts, atlas, seed=7, subject_index=0)
    assert vertices.shape == (160, atlas.n_vertices) and vertices.dtype == np.float32
    assert (vertices[:, atlas.labels == 0] == 0).all()
    back = atlas.parcellate(vertices)
    assert np.corrcoef(back.ravel(), ts.ravel())[0, 1] > 0.99
    assert np.abs(back - ts).max() < 0.1
    assert np.array_equal(vertices, expand_to_vertices(ts, atlas, seed=7, subject_index=0))
    # Loadings vary within parcels, differ between subjects and are spatially smooth.
    ones = np.ones((1, 100), np.float32)
    load0 = expand_to_vertices(ones, atlas, 7, 0, noise_sd=0.0)[0]
    load1 = expand_to_vertices(ones, atlas, 7, 1, noise_sd=0.0)[0]
    inside = atlas.labels > 0
    assert (load0[inside] > 0).all() and load0[inside].std() > 0.1
    assert not np.allclose(load0, load1)
    edges = atlas.adjacency.tocoo()
    same = (atlas.labels[edges.row] == atlas.labels[edges.col]) & (atlas.labels[edges.row] > 0)
    assert np.corrcoef(load0[edges.row[same]], load0[edges.col[same]])[0, 1] > 0.5


def test_expand_to_vertices_rejects_wrong_shape(atlas):
    with pytest.raises(InputError, match="timeseries"):
        expand_to_vertices(np.zeros((10, 99), np.float32), atlas, 0, 0)


@pytest.mark.parametrize("overrides, field", [
    (["n_timepoints=-5"], "n_timepoints"),
    (["n_subjects=0"], "n_subjects"),
    (["tr=0"], "tr"),
    (["ar_rho=[0.6, 0.3]"], "ar_rho"),
    (["patient_fraction=1.5"], "patient_fraction"),
    (["individual_dof=50"], "individual_dof"),
    (["effects=[{phenotype: sex, networks: [Default, Visual], delta: 0.1}]"], "effects[0].networks"),
    (["effects=[{phenotype: height, networks: [Default, Vis], delta: 0.1}]"], "effects[0].phenotype"),
    (["effects=[{phenotype: sex, networks: [Default, Vis], delta: 2.0}]"], "effects[0].delta"),
])
def test_bad_config_names_the_field_and_writes_nothing(tmp_path, overrides, field):
    cfg = load_config(RestWorldConfig, tiny_config("rest_world_tiny"), overrides)
    with pytest.raises(InputError) as err:
        generate_rest_population(cfg, tmp_path / "bad")
    assert err.value.field == field
    assert not any(tmp_path.iterdir())


def test_unknown_config_key_is_rejected():
    with pytest.raises(InputError, match="n_subject"):
        load_config(RestWorldConfig, tiny_config("rest_world_tiny"), ["n_subject=3"])


def test_nearest_correlation_repairs_an_invalid_matrix():
    rng = np.random.default_rng(0)
    bad = np.clip(rng.normal(0, 0.6, (30, 30)), -0.99, 0.99)
    bad = (bad + bad.T) / 2
    np.fill_diagonal(bad, 1.0)
    assert np.linalg.eigvalsh(bad)[0] < 0
    fixed = nearest_correlation(bad)
    assert np.allclose(np.diag(fixed), 1.0) and np.allclose(fixed, fixed.T)
    assert np.linalg.eigvalsh(fixed)[0] > 0
    np.linalg.cholesky(fixed)


def test_released_pages_keep_their_data(tmp_path, monkeypatch):
    """Streaming drops written pages from memory every RELEASE_EVERY subjects; the file keeps them."""
    from fmrilm.brain import rest_world

    reference = Dataset(generate_rest_population(tiny(), tmp_path / "ref")).array("timeseries")
    monkeypatch.setattr(rest_world, "RELEASE_EVERY", 5)
    streamed = Dataset(generate_rest_population(tiny(), tmp_path / "streamed")).array("timeseries")
    assert np.array_equal(reference, streamed)
