"""In-silico stimulation: α = 0 reproduces the unperturbed output; control patches copy the target's size and
shape away from it; intervals and specificity; the ideal observer; the CLI's outputs on a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_evaluation_runner import build_tiny_run, cli
from tiny_configs import tiny_config

from fmrilm.errors import InputError
from fmrilm.stimulation.experiment import StimulationConfig, concept_rate


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_task_world):
    return build_tiny_run(tmp_path_factory.mktemp("stim"), tiny_task_world)


def _config(run, out, **extra) -> StimulationConfig:
    from fmrilm.config import load_config

    sets = [f"corpus={run / 'corpus'}", f"tokenizer={run / 'tokenizer'}", f"model={run / 'instruct'}",
            f"out={out}", *[f"{k}={v}" for k, v in extra.items()]]
    return load_config(StimulationConfig, tiny_config("stimulation_tiny"), sets)


def test_alpha_zero_reproduces_the_unperturbed_output(tiny_run, tmp_path):
    from fmrilm.artifacts import resolve_model_dir, resolve_tokenizer_dir
    from fmrilm.brain.task_data import TaskData
    from fmrilm.evaluation.task_eval import CAPTION_PROMPT
    from fmrilm.retrieval.captioner import Captioner
    from fmrilm.stimulation.experiment import caption_scans, perturb
    from fmrilm.tokenizer.features import tokenize_betas
    from fmrilm.tokenizer.model import BrainTokenizer

    cfg = _config(tiny_run, tmp_path / "unused")
    data = TaskData(tiny_run / "task_world")
    tokenizer = BrainTokenizer.from_pretrained(resolve_tokenizer_dir(tiny_run / "tokenizer"))
    captioner = Captioner.load(resolve_model_dir(tiny_run / "instruct"))
    scans = data.mean_betas(0, [1, 4, 7])
    plain = captioner.generate([t[None] for t in tokenize_betas(tokenizer, scans)], [CAPTION_PROMPT] * 3,
                               max_new_tokens=cfg.max_new_tokens)
    vertices, sd = np.arange(0, 2000, 7), scans.std(0)
    assert caption_scans(captioner, tokenizer, perturb(scans, vertices, 0.0, sd), cfg) == plain
    # A large perturbation changes only the patch, and does change what the tokenizer sees.
    big = perturb(scans, vertices, 50.0, sd)
    outside = np.setdiff1d(np.arange(scans.shape[1]), vertices)
    assert np.array_equal(big[:, outside], scans[:, outside])
    assert np.allclose(big[:, vertices] - scans[:, vertices], 50.0 * sd[vertices], atol=1e-4)
    assert not np.array_equal(tokenize_betas(tokenizer, big), tokenize_betas(tokenizer, scans))


def test_stimulate_cli_writes_dose_response_observer_and_surface_map(tiny_run, tmp_path):
    out = tmp_path / "stim"
    argv = ["stimulate", "--config", tiny_config("stimulation_tiny"), "--set", f"corpus={tiny_run / 'corpus'}",
            f"tokenizer={tiny_run / 'tokenizer'}", f"model={tiny_run / 'instruct'}", f"out={out}"]
    assert cli(argv) == 0
    summary = json.loads((out / "stimulation.json").read_text())
    n_scans, n_patches, n_control = summary["n_scans"], summary["n_control_patches"], summary["n_control_scans"]
    assert (n_patches, n_control) == (3, 2) and summary["alphas"] == [0.0, 2.0]
    for reader in ("lm", "ideal_observer"):
        result = summary[reader]
        assert set(result["conditions"]) == {"target", "control_patches", "other_category"}
        for condition in result["conditions"].values():
            for dose in condition["doses"]:
                lo, hi = dose["concept_rate_ci"]
                assert 0.0 <= lo <= dose["concept_rate"] <= hi <= 1.0
            lo, hi = condition["rise_ci"]
            assert lo <= condition["rise"] <= hi
        spec = result["specificity"]
        assert (spec["value"] is None) == (spec["status"] != "defined")
        assert (spec["value"] is None) == (result["conditions"]["control_patches"]["rise_ci"][0] <= 0)
        for key in ("rise_difference_vs_controls", "rise_difference_vs_other"):
            assert result[key]["ci"][0] <= result[key]["value"] <= result[key]["ci"][1]
    lm, observer = summary["lm"]["conditions"], summary["ideal_observer"]["conditions"]
    # α = 0 is one captioning of the unperturbed scans, shared by every condition.
    zero = {name: c["doses"][0] for name, c in lm.items()}
    assert zero["target"]["captions"] == zero["other_category"]["captions"]
    assert len(zero["target"]["captions"]) == n_scans
    slots = summary["control_scan_slots"]
    assert zero["control_patches"]["captions"] == [[zero["target"]["captions"][i] for i in s] for s in slots]
    assert np.array(lm["control_patches"]["per_patch"]).shape == (2, n_patches)
    assert all(np.isfinite(d["probe_semscore"]) for c in lm.values() for d in c["doses"])
    decoded = observer["control_patches"]["doses"][-1]["decoded_stimuli"]
    assert np.array(decoded).shape == (n_patches, n_control)
    from fmrilm.corpus.heldout import load_heldout

    assert set(np.ravel(decoded)) <= set(load_heldout(tiny_run / "corpus").train_stimuli.tolist())
    assert summary["cost"]["generate_calls"] == 2
    assert summary["cost"]["captions"] == n_scans + 2 * n_scans + n_patches * n_control
    assert set(summary["targets"]) == {"spearman_min", "specificity_min"}
    assert summary["targets"]["specificity_min"]["met"] in (True, False, None)
    # Scans come from stimuli whose reference captions do not already name the concept.
    from fmrilm.brain.task_data import TaskData

    stimuli = TaskData(tiny_run / "task_world").stimuli
    assert summary["concept_free_stimuli"] and len(summary["stimuli"]) == n_scans
    assert all(concept_rate(stimuli[m]["captions"], summary["concept_words"]) == 0 for m in summary["stimuli"])
    # Control patches: the target's size and component count, none touching the target patch.
    patches, vertices = summary["patches"], summary["vertices"]
    assert set(vertices["target"]) != set(vertices["other_category"])
    assert len(vertices["control_patches"]) == n_patches
    for control, info in zip(vertices["control_patches"], patches["control_patches"]):
        assert len(set(control)) == len(vertices["target"]) == info["n_vertices"] == 50
        assert info["n_components"] == patches["target"]["n_components"] == len(info["seeds"])
        assert not set(control) & set(vertices["target"])
    for name in ("dose_response.png", "vertices.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_bad_config_is_refused_before_writing(tiny_run, tmp_path):
    from fmrilm.stimulation.experiment import run_stimulation

    for extra, field in (({"target": "zebras"}, "target"), ({"alphas": "[1.0, 2.0]"}, "alphas"),
                         ({"alphas": "[0.0, -1.0]"}, "alphas"), ({"other_category": "faces"}, "other_category"),
                         ({"n_control_scans": 9}, "n_control_scans"), ({"n_control_patches": 0}, "n_control_patches"),
                         ({"n_boot": 10}, "n_boot"), ({"control_min_distance_mm": 1e4}, "control_min_distance_mm")):
        with pytest.raises(InputError, match=field):
            run_stimulation(_config(tiny_run, tmp_path / "out", **extra))
        assert not (tmp_path / "out").exists()


def test_concept_rate_counts_whole_words():
    words = ["man", "people", "stop sign"]
    assert concept_rate(["a man on a horse", "a mango", "two People", "a stop sign"], words) == 0.75


def test_control_patches_copy_the_target_layout_away_from_it(atlas):
    from scipy.sparse.csgraph import dijkstra

    from fmrilm.stimulation.patches import components, control_patches, cortex_graph, describe_patch, geodesic_disc

    graph = cortex_graph(atlas)
    cortex = np.flatnonzero(atlas.labels > 0)
    left, right = cortex[cortex < atlas.hemi_sizes[0]][100], cortex[cortex >= atlas.hemi_sizes[0]][3000]
    # A disc is the `size` vertices nearest its seed: connected, and nothing outside is nearer.
    disc = geodesic_disc(graph, left, 40)
    distance = dijkstra(graph, indices=left)
    assert disc[0] == left and len(set(disc)) == 40 and len(components(disc, atlas)) == 1
    assert distance[disc].max() <= np.delete(distance, disc).min()
    target = np.concatenate([disc, geodesic_disc(graph, right, 15)])
    patches, seeds = control_patches(target, atlas, 4, 12.0, np.random.default_rng(0))
    to_target = dijkstra(graph, indices=target, min_only=True)
    for patch, patch_seeds in zip(patches, seeds):
        pieces = components(patch, atlas)
        assert [len(p) for p in pieces] == [40, 15] and len(patch_seeds) == 2
        assert [atlas.hemispheres[p[0]] for p in pieces] == [0, 1]
        assert to_target[patch].min() > 12.0 and (atlas.labels[patch] > 0).all()
    assert len({tuple(p) for p in patches}) == 4
    # Compact like the target, unlike the same number of scattered vertices.
    scattered = np.random.default_rng(0).choice(cortex, 55, replace=False)
    assert describe_patch(patches[0], atlas)["boundary_fraction"] < 0.8 <= describe_patch(scattered, atlas)[
        "boundary_fraction"]
    with pytest.raises(InputError, match="control_min_distance_mm"):
        control_patches(target, atlas, 1, 1e4, np.random.default_rng(0))


def test_specificity_is_undefined_when_the_control_rise_is_indistinguishable_from_zero():
    from fmrilm.stimulation.statistics import compare_conditions

    rng = np.random.default_rng(0)
    alphas = [0.0, 1.0, 2.0]
    target = np.stack([np.zeros(30), rng.random(30) < 0.3, rng.random(30) < 0.6]).astype(float)
    flat = np.zeros((3, 10, 8))
    result = compare_conditions({"target": target, "control_patches": flat, "other_category": target}, alphas,
                                500, rng)
    assert result["specificity"]["value"] is None and "undefined" in result["specificity"]["status"]
    lo, hi = result["rise_difference_vs_controls"]["ci"]
    assert lo > 0 and np.isclose(result["rise_difference_vs_controls"]["value"], target[-1].mean())
    # The same scans resampled for target and other category: identical curves differ by exactly 0.
    assert result["rise_difference_vs_other"] == {"value": 0.0, "ci": [0.0, 0.0]}
    assert result["conditions"]["target"]["spearman"] == 1.0
    rising = flat.copy()
    rising[-1] = rng.random((10, 8)) < 0.2
    result = compare_conditions({"target": target, "control_patches": rising, "other_category": target}, alphas,
                                500, rng)
    spec = result["specificity"]
    assert spec["status"] == "defined" and np.isclose(spec["value"], target[-1].mean() / rising[-1].mean())
    assert spec["ci"][0] <= spec["value"] <= spec["ci"][1]
    assert np.isclose(result["conditions"]["control_patches"]["doses"][-1]["concept_rate"], rising[-1].mean())


def test_ideal_observer_picks_the_candidate_a_scan_comes_from(tiny_task_world):
    from fmrilm.brain.task_data import TaskData
    from fmrilm.stimulation.experiment import observer_choice

    data = TaskData(tiny_task_world)
    clean = np.asarray(data.clean(0)[:40])
    variance, factor = data.noise_covariance(0)
    rng = np.random.default_rng(0)
    picks = rng.permutation(40)[:10]
    scans = clean[picks] + 0.1 * np.sqrt(variance) * rng.standard_normal((10, clean.shape[1]))
    assert np.array_equal(observer_choice(scans, clean, variance, factor, 3), picks)


def test_mesh_smoothing_spreads_a_spike_to_its_neighbours_and_concentrates_top_vertices(atlas):
    from fmrilm.brain.encoding_model import smooth, smoothing_operator
    from fmrilm.brain.localizer import top_vertices

    op = smoothing_operator(atlas)  # what the stimulation's vertex choice smooths with

    spike = np.zeros(atlas.n_vertices)
    spike[5000] = 1.0
    assert np.array_equal(smooth(spike, op, 0), spike)
    once = smooth(spike, op, 1)
    neighbours = atlas.adjacency[5000].indices
    degree = np.asarray(atlas.adjacency.sum(1)).ravel() + 1.0
    assert np.isclose(once[5000], 1.0 / degree[5000])
    assert np.allclose(once[neighbours], 1.0 / degree[neighbours])
    assert np.count_nonzero(once) == 1 + len(neighbours)
    # A smooth bump plus vertex noise: the top vertices of the smoothed map fall in fewer parcels.
    rng = np.random.default_rng(0)
    bump = smooth(spike, op, 15) / smooth(spike, op, 15).max()
    noisy = bump + 0.3 * rng.standard_normal(atlas.n_vertices)
    cortex = atlas.labels > 0
    parcels = [len(np.unique(atlas.labels[top_vertices(smooth(noisy, op, k), 100, cortex)]))
               for k in (0, 5)]
    assert parcels[1] < parcels[0]
