"""The synthetic task world and its reader: layout, determinism, ground truth, localizers, validation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from tiny_configs import tiny_config

from fmrilm.brain.encoding_model import estimate_ncsnr, noise_ceiling_from_ncsnr
from fmrilm.brain.localizer import LOCALIZER_CATEGORIES, localizer_contrast, top_vertices
from fmrilm.brain.scenes import mentions
from fmrilm.brain.store import Dataset
from fmrilm.brain.task_data import TaskData
from fmrilm.brain.task_world import TaskWorldConfig, generate_task_world
from fmrilm.config import load_config
from fmrilm.errors import InputError
from fmrilm.io import load_npy, read_json, save_npy, sha256_file, write_json


@pytest.fixture(scope="module")
def data(tiny_task_world):
    return TaskData(tiny_task_world)


def network_of_vertices(atlas):
    return np.array(["wall"] + [p.network for p in atlas.parcels])[atlas.labels]


def test_layout_shapes_and_dtypes(data, atlas):
    cfg = load_config(TaskWorldConfig, tiny_config("task_world_tiny"))
    S, M, R, V = cfg.n_subjects, cfg.n_stimuli, cfg.n_repeats, atlas.n_vertices
    atlas.check_same(data.atlas_info, data.path)
    assert data.betas.shape == (S * M * R, V) and data.betas.dtype == np.float32
    for name, dtype in (
        ("stimulus", np.int32),
        ("subject", np.int16),
        ("session", np.int16),
        ("repeat", np.int8),
    ):
        assert getattr(data, f"trial_{name}").dtype == dtype
    ds = data.dataset
    assert ds.array("clean").shape == (S, M, V) and ds.array("noise_ceiling").shape == (S, V)
    assert ds.array("localizer_betas").shape == (S * len(LOCALIZER_CATEGORIES) * cfg.localizer.n_runs, V)
    assert ds.manifest["source"] == "synthetic" and ds.manifest["n_stimuli"] == M
    assert data.novel_categories == list(cfg.novel_categories) and data.has_ground_truth
    assert len(data.stimuli) == M and [r["subject"] for r in data.subjects] == ["sub-01", "sub-02", "sub-03"]
    for s in range(S):
        trials = data.trials(s)
        counts = np.bincount(data.trial_stimulus[trials], minlength=M)
        assert (counts == R).all()
        for k in range(R):
            assert sorted(data.trial_stimulus[trials][data.trial_repeat[trials] == k]) == list(range(M))
        # NSD convention: every vertex z-scored within each (subject, session).
        for session in np.unique(data.trial_session[trials]):
            block = np.asarray(data.betas[trials[data.trial_session[trials] == session]], np.float64)
            assert np.abs(block.mean(0)).max() < 1e-4 and np.abs(block.std(0) - 1).max() < 1e-3


def test_novel_stimuli_are_flagged_and_named(data):
    novel = data.novel_stimuli
    assert len(novel) >= len(data.novel_categories)
    for m in novel:
        stim = data.stimuli[m]
        held = [c for c in stim["categories"] if c in data.novel_categories]
        assert held and all(mentions(cap, held[0]) for cap in stim["captions"])
    assert set(data.category_synonyms["airplane"]) >= {"airplane", "plane"}


def test_deterministic_for_a_seed(tiny_task_world, tmp_path):
    cfg = load_config(TaskWorldConfig, tiny_config("task_world_tiny"))
    again = generate_task_world(cfg, tmp_path / "again")
    first = Dataset(tiny_task_world)
    assert sorted(first.manifest["arrays"]) == sorted(Dataset(again).manifest["arrays"])
    for name in first.manifest["arrays"]:
        assert sha256_file(tiny_task_world / f"{name}.npy") == sha256_file(again / f"{name}.npy"), name
    for table in ("stimuli", "subjects", "localizer"):
        assert (tiny_task_world / f"{table}.jsonl").read_bytes() == (again / f"{table}.jsonl").read_bytes()


def test_clean_signal_and_noise_ceiling(data, atlas):
    net = network_of_vertices(atlas)
    features = data.dataset.array("features")
    for s in range(len(data.subjects)):
        clean = np.asarray(data.clean(s))
        np.testing.assert_allclose(clean, features @ data.dataset.array("weights")[s], atol=1e-4)
        nc = data.noise_ceiling(s)
        vis, som = np.median(nc[net == "Vis"]), np.median(nc[net == "SomMot"])
        assert 15 < vis < 45 and som < vis / 3
        # The NSD estimator applied to the single trials recovers the stored ground truth.
        trials = data.trials(s)
        estimated = noise_ceiling_from_ncsnr(estimate_ncsnr(data.betas[trials], data.trial_stimulus[trials]))
        assert np.corrcoef(estimated, nc)[0, 1] > 0.8
        assert np.median(estimated[net == "Vis"]) > 3 * np.median(estimated[net == "SomMot"])
        # Averaging repeats tracks the clean signal, far better in visual than in somatomotor cortex.
        mean = data.mean_betas(s)
        r = [
            np.mean([np.corrcoef(mean[:, v], clean[:, v])[0, 1] for v in np.flatnonzero(net == n)[::7]])
            for n in ("Vis", "SomMot")
        ]
        assert r[0] > 0.5 and r[0] > r[1] + 0.3


def test_localizer_contrasts_peak_in_their_patches(data, atlas):
    centres = data.dataset.json("encoding")["patch_centres"]
    for s, row in enumerate(data.subjects):
        betas, categories = data.localizer(s)
        assert len(betas) == len(categories) and set(categories) == set(LOCALIZER_CATEGORIES)
        for category in ("faces", "bodies", "places", "words"):
            peak = atlas.coords[np.argmax(localizer_contrast(betas, categories, category))]
            distance = np.linalg.norm(np.asarray(centres[row["subject"]][category]) - peak, axis=1).min()
            assert distance < 15.0, (row["subject"], category, distance)
        # A functional ROI picked from the localizer sits inside the face patch.
        roi = top_vertices(localizer_contrast(betas, categories, "faces"), 20)
        near = np.linalg.norm(
            atlas.coords[roi][:, None] - np.asarray(centres[row["subject"]]["faces"]), axis=2
        )
        assert (near.min(1) < 20.0).all()


def test_noise_covariance_describes_the_betas(data, atlas):
    from fmrilm.evaluation.ideal_observer import GaussianObserver

    cfg = load_config(TaskWorldConfig, tiny_config("task_world_tiny"))
    assert data.dataset.array("noise_basis").shape == (cfg.encoding.noise_rank, atlas.n_vertices)
    d, u = data.noise_covariance("sub-02")
    noise_sd = np.asarray(data.dataset.array("noise_sd")[1], np.float64)
    np.testing.assert_allclose(d + (u**2).sum(1), noise_sd**2, rtol=1e-4)  # unit raw variance, in z-units
    trials = data.trials("sub-02")
    residual = np.asarray(data.betas[trials], np.float64) - data.clean(1)[data.trial_stimulus[trials]]
    # Under the right covariance a trial's Mahalanobis norm is chi-square with V degrees of freedom
    # (mean V, sd sqrt(2V)); the diagonal model gets the mean right but not the spread.
    full = GaussianObserver(d, u).quadratic(residual) / atlas.n_vertices
    diagonal = GaussianObserver(noise_sd**2).quadratic(residual) / atlas.n_vertices
    assert abs(full.mean() - 1) < 0.05 and full.std() < 0.03 < diagonal.std()
    older = TaskData(data.path)  # a dataset written before the basis was saved
    del older.dataset.manifest["arrays"]["noise_basis"]
    with pytest.raises(InputError, match="noise_basis"):
        older.noise_covariance(0)


def test_mean_betas_averages_repeats(data):
    trials = data.trials("sub-02")
    wanted = [5, 0, 5, 17]
    expected = [np.asarray(data.betas[trials[data.trial_stimulus[trials] == m]]).mean(0) for m in wanted]
    np.testing.assert_allclose(data.mean_betas("sub-02", wanted), expected, atol=1e-5)
    with pytest.raises(InputError, match="stimuli"):
        data.mean_betas(0, [len(data.stimuli)])
    with pytest.raises(InputError, match="subject"):
        data.trials("sub-99")


def test_reader_rejects_doctored_datasets(tiny_task_world, tmp_path):
    bad = shutil.copytree(tiny_task_world, tmp_path / "out_of_range")
    stim = np.array(load_npy(bad / "trial_stimulus.npy", mmap=False))
    stim[3] = 10_000
    save_npy(bad / "trial_stimulus.npy", stim)
    with pytest.raises(InputError, match=r"trial_stimulus\.npy.*out of range"):
        TaskData(bad)

    bad = shutil.copytree(tiny_task_world, tmp_path / "short_table")
    manifest = read_json(bad / "manifest.json")
    save_npy(bad / "trial_repeat.npy", np.zeros(5, np.int8))
    manifest["arrays"]["trial_repeat"]["shape"] = [5]
    write_json(bad / "manifest.json", manifest)
    with pytest.raises(InputError, match=r"trial_repeat\.npy.*shape"):
        TaskData(bad)

    bad = shutil.copytree(tiny_task_world, tmp_path / "vertices")
    manifest = read_json(bad / "manifest.json")
    betas = load_npy(bad / "betas.npy")
    save_npy(bad / "betas.npy", np.asarray(betas[:, :-4]))
    manifest["arrays"]["betas"]["shape"] = [betas.shape[0], betas.shape[1] - 4]
    write_json(bad / "manifest.json", manifest)
    with pytest.raises(InputError, match=r"betas\.npy.*20484 vertices"):
        TaskData(bad)

    del manifest["arrays"]["trial_session"]
    write_json(bad / "manifest.json", manifest)
    with pytest.raises(InputError, match="missing required arrays"):
        TaskData(bad)


def test_bad_config_is_refused_before_writing(tmp_path):
    out = tmp_path / "world"
    for override, field in (
        (["n_stimuli=40"], "novel_fraction"),
        (["novel_categories=[unicorn]"], "novel_categories"),
        (["encoding.noise_correlated_share=2"], "noise_correlated_share"),
    ):
        cfg = load_config(TaskWorldConfig, tiny_config("task_world_tiny"), override)
        with pytest.raises(InputError, match=field):
            generate_task_world(cfg, out)
        assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_refuses_to_overwrite(tiny_task_world, capsys):
    from fmrilm.cli import main

    assert main(["world", "task", "--config", tiny_config("task_world_tiny"), "--out", str(tiny_task_world)]) == 2
    assert "already exists" in capsys.readouterr().err
