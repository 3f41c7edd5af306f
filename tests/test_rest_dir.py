"""A directory of rest runs → one rest dataset: surface and parcel-series runs, phenotypes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from data_writers import write_confounds, write_mgh, write_rest_dir

from fmrilm.brain.rest_dir import import_rest_dir
from fmrilm.brain.store import Dataset
from fmrilm.errors import InputError


@pytest.fixture
def names(atlas):
    return [p.name for p in atlas.parcels]


def test_parcel_series_runs_become_one_dataset_cut_to_the_shortest_run(tmp_path, atlas, names):
    lengths = (50, 44, 47)
    root = write_rest_dir(tmp_path / "runs", names, lengths=lengths)
    # columns in another order than the atlas's: read by name
    path = root / "sub-02.tsv"
    lines = path.read_text().splitlines()
    table = [line.split("\t") for line in lines]
    order = np.random.default_rng(0).permutation(len(names))
    path.write_text("\n".join("\t".join(row[j] for j in order) for row in table) + "\n")
    ds = Dataset(import_rest_dir(root, tmp_path / "rest", tr=2.0, atlas=atlas), kind="rest")
    series = np.asarray(ds.array("timeseries"))
    assert series.shape == (3, min(lengths), atlas.n_parcels)
    assert ds.manifest["cut_to_shortest"] == {"sub-01": 50, "sub-03": 47} and ds.manifest["tr"] == 2.0
    subjects = ds.table("subjects")
    assert [s["subject"] for s in subjects] == ["sub-01", "sub-02", "sub-03"]
    assert subjects[0]["sex"] == "F" and subjects[0]["age"] == 23.0 and subjects[2]["age"] is None  # n/a
    assert np.allclose(series[1].std(0, ddof=1), 1.0, atol=1e-4)  # cleaned to unit variance (the uncut run)
    raw = np.array([[float(v) for v in row] for row in table[1:]])
    # sub-02's parcel 0 is the column named names[0], wherever the file put it
    assert np.corrcoef(series[1, :, 0], raw[: min(lengths), 0])[0, 1] > 0.9


def test_surface_runs_keep_their_vertex_series(tmp_path, atlas):
    root = tmp_path / "runs"
    root.mkdir()
    rng = np.random.default_rng(1)
    for subject, n in (("sub-a", 30), ("sub-b", 28)):
        data = rng.standard_normal((atlas.n_vertices, n)).astype(np.float32)
        write_mgh(root / f"{subject}.lh.mgz", data[:10242], tr_seconds=2.0)
        write_mgh(root / f"{subject}.rh.mgz", data[10242:], tr_seconds=2.0)
    write_confounds(root / "sub-a_confounds.tsv", rng.standard_normal((30, 2)))
    ds = Dataset(import_rest_dir(root, tmp_path / "rest", atlas=atlas), kind="rest")
    assert ds.array("timeseries").shape == (2, 28, atlas.n_parcels)
    assert ds.array("vertex_timeseries").shape == (2, 28, atlas.n_vertices)
    assert ds.table("subjects")[0]["sex"] is None  # no participants table: unknown, no questions


def bad(tmp_path, names, problem):
    root = write_rest_dir(tmp_path / "runs", names, lengths=(30, 30))
    if problem == "header":
        lines = (root / "sub-01.tsv").read_text().splitlines()
        (root / "sub-01.tsv").write_text("\n".join(["\t".join(["bogus", *names[1:]]), *lines[1:]]) + "\n")
    elif problem == "nan":
        lines = (root / "sub-02.tsv").read_text().splitlines()
        lines[5] = "\t".join(["nan", *lines[5].split("\t")[1:]])
        (root / "sub-02.tsv").write_text("\n".join(lines) + "\n")
    elif problem == "short":
        lines = (root / "sub-02.tsv").read_text().splitlines()
        (root / "sub-02.tsv").write_text("\n".join(lines[:4]) + "\n")
    elif problem == "age":
        (root / "participants.tsv").write_text("participant_id\tage\nsub-01\told\n")
    elif problem == "hemisphere":
        write_mgh(root / "sub-09.lh.mgz", np.zeros((10242, 30), np.float32))
    return root


@pytest.mark.parametrize("problem, match", [
    ("header", "bogus"), ("nan", "NaN|non-finite|finite"), ("short", "shorter than"), ("age", "not a number"),
    ("hemisphere", "several kinds")])
def test_bad_rest_directories_fail_clearly_before_a_dataset_exists(tmp_path, atlas, names, problem, match):
    root = bad(tmp_path, names, problem)
    with pytest.raises(InputError, match=match):
        import_rest_dir(root, tmp_path / "rest", tr=2.0, atlas=atlas, min_timepoints=10)
    assert not (tmp_path / "rest").exists()


def test_runs_without_a_repetition_time_are_refused(tmp_path, atlas, names):
    root = write_rest_dir(tmp_path / "runs", names, lengths=(20, 20))
    with pytest.raises(InputError, match="source.tr"):
        import_rest_dir(root, tmp_path / "rest", atlas=atlas)
