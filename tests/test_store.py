"""Shared plumbing: typed configs, atomic writes, dataset directories."""

from dataclasses import dataclass, field

import numpy as np
import pytest

from fmrilm.brain.store import Dataset, DatasetWriter
from fmrilm.config import load_config, save_config
from fmrilm.errors import InputError, check_finite
from fmrilm.io import atomic_path, load_npy, read_json, save_npy


@dataclass
class Inner:
    k: int = 4
    name: str = "a"


@dataclass
class Outer:
    seed: int = 0
    rate: float = 0.5
    inner: Inner = field(default_factory=Inner)
    sizes: tuple[int, int] = (1, 2)


def test_config_from_yaml_with_overrides_and_resolved_save(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nrate: 1\ninner: {k: 8}\nsizes: [5, 6]\n")
    cfg = load_config(Outer, path, ["inner.name=b", "rate=0.25"])
    assert cfg == Outer(seed=3, rate=0.25, inner=Inner(k=8, name="b"), sizes=(5, 6))
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Outer, tmp_path / "resolved.yaml") == cfg


def test_unknown_config_keys_and_names_are_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner: {kk: 8}\n")
    with pytest.raises(InputError, match="kk"):
        load_config(Outer, path)
    with pytest.raises(InputError, match="shipped"):
        load_config(Outer, "no_such_config_anywhere")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.npy"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    save_npy(target, np.arange(5))
    assert load_npy(target).tolist() == [0, 1, 2, 3, 4]


def test_check_finite_names_the_first_bad_index():
    x = np.zeros((3, 4))
    x[1, 2] = np.nan
    with pytest.raises(InputError, match=r"1 non-finite.*\(1, 2\)"):
        check_finite(x, "betas.mgh")


def test_dataset_written_atomically_and_read_back(tmp_path):
    out = tmp_path / "ds"
    atlas = {"name": "toy", "n_parcels": 2, "n_vertices": 5, "fingerprint": "x"}
    with DatasetWriter(out, "task", atlas, Outer(), seed=1) as w:
        arr = w.create_array("betas", (7, 5))
        arr[:] = np.arange(35).reshape(7, 5)
        w.write_table("stimuli", [{"stimulus": 0}, {"stimulus": 1}])
        assert not out.exists()  # nothing under the final name until finish()
        w.finish(n_stimuli=2)
    ds = Dataset(out, kind="task")
    assert ds.array("betas")[6, 4] == 34 and ds.table("stimuli")[1]["stimulus"] == 1
    assert ds.manifest["n_stimuli"] == 2 and ds.config["seed"] == 0
    with pytest.raises(InputError, match="kind"):
        Dataset(out, kind="rest")
    with pytest.raises(InputError, match="already exists"):
        DatasetWriter(out, "task", atlas, Outer(), seed=1)


def test_failed_dataset_write_leaves_no_directory(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(ValueError):
        with DatasetWriter(out, "task", {}, Outer(), seed=1) as w:
            w.create_array("betas", (3, 2))
            raise ValueError("generator failed")
    assert list(tmp_path.iterdir()) == []


def test_dataset_refuses_arrays_that_disagree_with_manifest(tmp_path):
    out = tmp_path / "ds"
    with DatasetWriter(out, "rest", {}, Outer(), seed=0) as w:
        w.write_array("timeseries", np.zeros((2, 3, 4), np.float32))
        w.finish()
    save_npy(out / "timeseries.npy", np.zeros((2, 3, 5), np.float32))
    with pytest.raises(InputError, match="disagrees with manifest"):
        Dataset(out).array("timeseries")
    assert read_json(out / "manifest.json")["kind"] == "rest"


def test_sweep_removes_leftovers_of_dead_writers_only(tmp_path, dead_pid):
    import os

    from fmrilm.brain.store import sweep_dead_partials

    pid = dead_pid
    dead = [tmp_path / f"task_world.partial-{pid}", tmp_path / "backbone" / f"stage0_x.old-{pid}",
            tmp_path / "corpus" / f".train-000003.tar.partial-{pid}"]
    for path in dead[:2]:
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "big.npy").write_bytes(b"x" * 100)
    dead[2].parent.mkdir()
    dead[2].write_bytes(b"half a shard")
    live = tmp_path / f"rest_world.partial-{os.getpid()}"  # a writer that is still running
    live.mkdir()
    kept = tmp_path / "task_world"
    kept.mkdir()
    assert sorted(sweep_dead_partials(tmp_path)) == sorted(dead)
    assert not any(p.exists() for p in dead) and live.is_dir() and kept.is_dir()
    assert sweep_dead_partials(tmp_path) == []
