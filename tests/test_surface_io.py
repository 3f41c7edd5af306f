"""Generic surface (MGH/MGZ, GIFTI) and volumetric (NIfTI) readers, on files written in the real formats."""

from __future__ import annotations

import numpy as np
import pytest
from data_writers import write_confounds, write_gifti, write_mgh, write_nifti

from fmrilm.brain.atlas import Atlas
from fmrilm.brain.surface_io import (
    CleanConfig,
    clean_signals,
    header_tr,
    read_confounds,
    read_surface_run,
    read_volume_run,
)
from fmrilm.errors import InputError

HEMI = 10242


@pytest.fixture(scope="module")
def atlas():
    return Atlas.schaefer(100)


def hemis(t, seed=0, n=HEMI):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, t)).astype(np.float32), rng.standard_normal((n, t)).astype(np.float32)


@pytest.mark.parametrize("suffix", [".mgh", ".mgz"])
def test_mgh_round_trip(tmp_path, atlas, suffix):
    lh, rh = hemis(7)
    paths = write_mgh(tmp_path / f"lh{suffix}", lh), write_mgh(tmp_path / f"rh{suffix}", rh)
    run = read_surface_run(*paths, atlas)
    assert run.shape == (7, atlas.n_vertices) and run.dtype == np.float32
    np.testing.assert_array_equal(run, np.concatenate([lh, rh]).T)
    first_parcel = run[:, atlas.parcel_vertices[0]].mean(1)
    np.testing.assert_allclose(atlas.parcellate(run)[:, 0], first_parcel, rtol=1e-5)


@pytest.mark.parametrize("per_timepoint", [True, False])
def test_gifti_round_trip(tmp_path, atlas, per_timepoint):
    lh, rh = hemis(9, seed=1)
    run = read_surface_run(write_gifti(tmp_path / "lh.func.gii", lh, per_timepoint),
                           write_gifti(tmp_path / "rh.func.gii", rh, per_timepoint), atlas)
    np.testing.assert_array_equal(run, np.concatenate([lh, rh]).T)


def test_gifti_time_by_vertex_array_and_mixed_formats(tmp_path, atlas):
    lh, rh = hemis(9, seed=2)
    # A single 2-D darray stored (T, V): the vertex axis is recognised by its icosahedral size.
    lh_path = write_gifti(tmp_path / "lh.gii", lh.T, per_timepoint=False)
    run = read_surface_run(lh_path, write_mgh(tmp_path / "rh.mgz", rh), atlas)
    np.testing.assert_array_equal(run, np.concatenate([lh, rh]).T)


def test_finer_fsaverage_is_decimated_to_fsaverage5(tmp_path, atlas):
    lh, rh = hemis(3, seed=3, n=40962)  # fsaverage6
    run = read_surface_run(write_mgh(tmp_path / "lh.mgh", lh), write_mgh(tmp_path / "rh.mgh", rh), atlas)
    np.testing.assert_array_equal(run, np.concatenate([lh[:HEMI], rh[:HEMI]]).T)


def test_without_atlas_keeps_every_vertex(tmp_path):
    lh, rh = hemis(2, n=50)
    run = read_surface_run(write_mgh(tmp_path / "lh.mgh", lh), write_mgh(tmp_path / "rh.mgh", rh[:40]))
    assert run.shape == (2, 90)


def test_surface_errors_name_the_file(tmp_path, atlas):
    lh7, rh7 = hemis(7)
    lh = write_mgh(tmp_path / "lh.mgh", lh7)
    rh9 = write_mgh(tmp_path / "rh9.mgh", hemis(9)[1])
    with pytest.raises(InputError, match="rh9.mgh.*time points"):
        read_surface_run(lh, rh9, atlas)
    with pytest.raises(InputError, match="missing"):
        read_surface_run(lh, tmp_path / "absent.mgh", atlas)
    short = write_mgh(tmp_path / "short.mgh", rh7[:10000])
    with pytest.raises(InputError, match="short.mgh.*10000 vertices"):
        read_surface_run(lh, short, atlas)
    bad = rh7.copy()
    bad[5, 3] = np.nan
    with pytest.raises(InputError, match="nan.mgh.*non-finite"):
        read_surface_run(lh, write_mgh(tmp_path / "nan.mgh", bad), atlas)
    garbage = tmp_path / "garbage.mgh"
    garbage.write_bytes(b"not an mgh file at all")
    with pytest.raises(InputError, match="garbage.mgh.*unreadable"):
        read_surface_run(lh, garbage, atlas)
    volume = write_nifti(tmp_path / "vol.nii.gz", np.zeros((2, 2, 2, 7), np.float32))
    with pytest.raises(InputError, match="vol.nii.gz.*not a surface file"):
        read_surface_run(lh, volume, atlas)


def test_header_tr(tmp_path):
    assert header_tr(write_mgh(tmp_path / "a.mgh", np.zeros((4, 3)), tr_seconds=0.8)) == pytest.approx(0.8)
    assert header_tr(write_mgh(tmp_path / "b.mgh", np.zeros((4, 3)))) is None
    nifti = write_nifti(tmp_path / "c.nii", np.zeros((2, 2, 2, 3), np.float32), 2.5)
    assert header_tr(nifti) == pytest.approx(2.5)


def test_read_confounds_with_and_without_header(tmp_path):
    values = np.arange(21, dtype=float).reshape(7, 3)
    conf, names = read_confounds(write_confounds(tmp_path / "plain.txt", values), 7)
    np.testing.assert_array_equal(conf, values)
    assert names == ["confound_00", "confound_01", "confound_02"]
    path = tmp_path / "fmriprep.tsv"
    path.write_text("trans_x\ttrans_x_derivative1\tcsf\n0.1\tn/a\t3\n0.3\t0.2\t4\n")
    conf, names = read_confounds(path, 2, columns=["csf", "trans_x_derivative1"])
    assert names == ["csf", "trans_x_derivative1"]
    np.testing.assert_array_equal(conf, [[3, 0], [4, 0.2]])
    with pytest.raises(InputError, match="fmriprep.tsv.*2 rows, the run has 9"):
        read_confounds(path, 9)
    with pytest.raises(InputError, match="no column"):
        read_confounds(path, columns=["white_matter"])


def test_clean_signals_regresses_confounds_and_keeps_constant_columns_zero():
    rng = np.random.default_rng(4)
    confound = rng.standard_normal((40, 1))
    data = np.concatenate([rng.standard_normal((40, 3)) + 5 * confound, np.full((40, 1), 7.0)], 1)
    out = clean_signals(data, tr=2.0, confounds=confound)
    assert np.isfinite(out).all() and np.all(out[:, 3] == 0)
    np.testing.assert_allclose(out[:, :3].std(0, ddof=1), 1, rtol=1e-5)
    centred = confound[:, 0] - confound[:, 0].mean()
    np.testing.assert_allclose(centred @ out[:, :3], 0, atol=1e-3)


def test_clean_signals_low_pass_removes_fast_oscillation():
    t = np.arange(200) * 1.0
    slow, fast = np.sin(2 * np.pi * 0.02 * t), np.sin(2 * np.pi * 0.3 * t)
    out = clean_signals((slow + fast)[:, None], tr=1.0, config=CleanConfig(low_pass=0.1, standardize=None))
    assert abs(np.corrcoef(out[20:-20, 0], slow[20:-20])[0, 1]) > 0.95
    with pytest.raises(InputError, match="repetition time"):
        clean_signals(slow[:, None], tr=None, config=CleanConfig(high_pass=0.01))


def volume_fixture(tmp_path, t=9):
    rng = np.random.default_rng(5)
    labels = np.zeros((6, 5, 4), np.int32)
    labels[:3, :, :2], labels[3:, :, :2], labels[:, :, 2:] = 1, 2, 4  # label 3 absent: columns follow labels
    data = rng.standard_normal((6, 5, 4, t)).astype(np.float32) + 10
    run = write_nifti(tmp_path / "bold.nii.gz", data, 2.0)
    return data, labels, run, write_nifti(tmp_path / "labels.nii.gz", labels)


def test_volume_run_raw_means(tmp_path):
    data, labels, run, atlas_img = volume_fixture(tmp_path)
    series = read_volume_run(run, atlas_img, clean=False)
    assert series.shape == (9, 3) and series.dtype == np.float32
    for column, label in enumerate((1, 2, 4)):
        np.testing.assert_allclose(series[:, column], data[labels == label].mean(0), rtol=1e-5)


def test_volume_run_cleaned_with_confounds(tmp_path):
    _, _, run, atlas_img = volume_fixture(tmp_path, t=12)
    confound = np.linspace(-1, 1, 12) ** 2
    conf_path = write_confounds(tmp_path / "conf.tsv", confound[:, None], ["quadratic"])
    series = read_volume_run(run, atlas_img, confounds=conf_path)
    np.testing.assert_allclose(series.std(0, ddof=1), 1, rtol=1e-4)
    np.testing.assert_allclose((confound - confound.mean()) @ series, 0, atol=1e-3)


def test_volume_run_errors(tmp_path):
    _, labels, run, atlas_img = volume_fixture(tmp_path)
    conf = write_confounds(tmp_path / "conf7.txt", np.zeros((7, 2)))
    with pytest.raises(InputError, match="conf7.txt.*7 rows, the run has 9"):
        read_volume_run(run, atlas_img, confounds=conf)
    with pytest.raises(InputError, match="labels4d.nii.*not a 3-D label image"):
        read_volume_run(run, write_nifti(tmp_path / "labels4d.nii", labels[..., None]), clean=False)
    with pytest.raises(InputError, match="flat.nii.*not a 4-D run"):
        read_volume_run(write_nifti(tmp_path / "flat.nii", np.zeros((6, 5, 4), np.float32)), atlas_img)
    bad = np.ones((6, 5, 4, 9), np.float32)
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(InputError, match="inf.nii.*non-finite"):
        read_volume_run(write_nifti(tmp_path / "inf.nii", bad, 2.0), atlas_img)
    with pytest.raises(InputError, match="missing"):
        read_volume_run(tmp_path / "none.nii.gz", atlas_img)
