"""The real brainspace rest run and surface rest runs written in the real formats."""

from __future__ import annotations

import numpy as np
import pytest
from data_writers import write_confounds, write_gifti, write_mgh

from fmrilm.brain.atlas import Atlas
from fmrilm.brain.rest_run import (
    BRAINSPACE_CONFOUND_NAMES,
    brainspace_run_paths,
    import_rest_run,
    load_rest_run,
)
from fmrilm.brain.store import Dataset
from fmrilm.brain.surface_io import CleanConfig, read_surface_run
from fmrilm.errors import InputError

HEMI = 10242


@pytest.fixture(scope="module")
def atlas():
    return Atlas.schaefer(100)


@pytest.fixture(scope="module")
def brainspace_run(atlas):
    return load_rest_run(atlas=atlas)


def test_brainspace_run_loads_cleaned_and_parcellated(brainspace_run, atlas):
    run = brainspace_run
    assert run.timeseries.shape == (652, 100) and run.timeseries.dtype == np.float32
    assert run.vertex_timeseries.shape == (652, atlas.n_vertices)
    assert np.isfinite(run.timeseries).all() and np.isfinite(run.vertex_timeseries).all()
    np.testing.assert_allclose(run.timeseries.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(run.timeseries.std(0, ddof=1), 1, rtol=1e-4)
    # Medial-wall vertices have no signal in the file: they stay exactly zero instead of turning into NaN.
    flat = read_surface_run(*brainspace_run_paths()[:2], atlas).std(0) == 0
    assert flat.sum() > 1000 and np.all(run.vertex_timeseries[:, flat] == 0)
    assert run.tr == pytest.approx(1.4) and run.source == "brainspace" and run.subject == "sub-010188"
    assert run.confound_names == BRAINSPACE_CONFOUND_NAMES and len(run.confound_names) == 29
    # Resting-state parcels are positively coupled on average (real signal, not noise).
    fc = np.corrcoef(run.timeseries.T)[np.triu_indices(100, 1)]
    assert 0.05 < fc.mean() < 0.8


def test_import_brainspace_run_is_a_rest_dataset(brainspace_run, atlas, tmp_path):
    out = import_rest_run(brainspace_run, tmp_path / "rest")
    ds = Dataset(out, kind="rest")
    atlas.check_same(ds.atlas_info, out)
    assert ds.array("timeseries").shape == (1, 652, 100)
    np.testing.assert_array_equal(ds.array("timeseries")[0], brainspace_run.timeseries)
    assert ds.array("vertex_timeseries").shape == (1, 652, atlas.n_vertices)
    assert ds.manifest["tr"] == pytest.approx(1.4) and ds.manifest["n_subjects"] == 1
    assert ds.manifest["n_timepoints"] == 652 and ds.manifest["source"] == "brainspace"
    assert ds.table("subjects") == [{"subject": "sub-010188", "age": None, "sex": None, "diagnosis": None,
                                     "site": None}]
    with pytest.raises(InputError, match="already exists"):
        import_rest_run(brainspace_run, out)


def write_run(tmp_path, t=9, seed=0, fmt="mgh", tr=2.0):
    rng = np.random.default_rng(seed)
    lh, rh = rng.standard_normal((2, HEMI, t)).astype(np.float32)
    lh[:50] = 3.0  # constant vertices, as on the medial wall
    if fmt == "mgh":
        paths = [write_mgh(tmp_path / f"sub-07_task-rest.{h}.mgz", d, tr)
                 for h, d in (("lh", lh), ("rh", rh))]
    else:
        paths = [write_gifti(tmp_path / f"sub-07_hemi-{h}.func.gii", d) for h, d in (("L", lh), ("R", rh))]
    return paths, np.concatenate([lh, rh]).T


def test_custom_run_regresses_confounds_with_header_tr(tmp_path, atlas):
    (lh, rh), raw = write_run(tmp_path, t=9)
    confounds = np.random.default_rng(1).standard_normal((9, 2))
    conf = write_confounds(tmp_path / "conf.tsv", confounds, ["csf", "white_matter"])
    run = load_rest_run(lh, rh, conf, atlas=atlas)
    assert run.timeseries.shape == (9, 100) and run.tr == pytest.approx(2.0)
    assert run.subject == "sub-07" and run.source == str(lh) and run.confound_names == ["csf", "white_matter"]
    centred = confounds - confounds.mean(0)
    np.testing.assert_allclose(centred.T @ run.vertex_timeseries, 0, atol=1e-3)
    assert np.all(run.vertex_timeseries[:, :50] == 0)
    one = load_rest_run(lh, rh, conf, atlas=atlas, confound_columns=["csf"])
    assert one.confound_names == ["csf"]
    assert not np.allclose(centred[:, 1] @ one.vertex_timeseries, 0, atol=1e-3)


def test_raw_gifti_run_is_parcellated_without_cleaning(tmp_path, atlas):
    (lh, rh), raw = write_run(tmp_path, t=7, fmt="gifti")
    run = load_rest_run(lh, rh, atlas=atlas, tr=0.72, clean=False)
    np.testing.assert_array_equal(run.vertex_timeseries, raw)
    np.testing.assert_allclose(run.timeseries, atlas.parcellate(raw), rtol=1e-6)
    assert run.cleaning is None and run.tr == pytest.approx(0.72) and run.confound_names == []


def test_band_pass_config_is_applied_and_recorded(tmp_path, atlas):
    (lh, rh), _ = write_run(tmp_path, t=40)
    config = CleanConfig(high_pass=0.01, low_pass=0.1)
    run = load_rest_run(lh, rh, atlas=atlas, config=config)
    unfiltered = load_rest_run(lh, rh, atlas=atlas)
    assert run.cleaning["low_pass"] == 0.1 and np.isfinite(run.timeseries).all()
    # White noise above 0.1 Hz (Nyquist 0.25 Hz at TR 2 s) is removed: neighbouring TRs become correlated.
    lag1 = np.mean([np.corrcoef(c[:-1], c[1:])[0, 1] for c in run.timeseries.T])
    lag1_raw = np.mean([np.corrcoef(c[:-1], c[1:])[0, 1] for c in unfiltered.timeseries.T])
    assert lag1 > lag1_raw + 0.3


def test_rest_run_errors(tmp_path, atlas):
    (lh, rh), _ = write_run(tmp_path, t=9)
    conf7 = write_confounds(tmp_path / "conf7.txt", np.zeros((7, 3)))
    with pytest.raises(InputError, match="conf7.txt.*7 rows, the run has 9"):
        load_rest_run(lh, rh, conf7, atlas=atlas)
    with pytest.raises(InputError, match="give both hemispheres"):
        load_rest_run(lh, atlas=atlas)
    rh7 = write_mgh(tmp_path / "rh7.mgz", np.zeros((HEMI, 7)), 2.0)
    with pytest.raises(InputError, match="rh7.mgz.*7 time points"):
        load_rest_run(lh, rh7, atlas=atlas)
    no_tr = write_mgh(tmp_path / "notr.lh.mgh", np.ones((HEMI, 9)))
    with pytest.raises(InputError, match="notr.lh.mgh.*repetition time"):
        load_rest_run(no_tr, rh, atlas=atlas)
    wrong = write_mgh(tmp_path / "fsaverage4.lh.mgh", np.ones((2562, 9)), 2.0)
    with pytest.raises(InputError, match="fsaverage4.lh.mgh.*2562 vertices"):
        load_rest_run(wrong, rh, atlas=atlas)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == []
