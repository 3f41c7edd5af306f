"""In-silico stimulation on a tiny run: α = 0 reproduces the unperturbed output; outputs and controls."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_evaluation_runner import build_tiny_run, cli

from fmrilm.errors import InputError
from fmrilm.stimulation.experiment import StimulationConfig, concept_rate


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_task_world):
    return build_tiny_run(tmp_path_factory.mktemp("stim"), tiny_task_world)


def _config(run, out, **extra) -> StimulationConfig:
    from fmrilm.config import load_config

    sets = [f"corpus={run / 'corpus'}", f"tokenizer={run / 'tokenizer'}", f"model={run / 'instruct'}",
            f"out={out}", *[f"{k}={v}" for k, v in extra.items()]]
    return load_config(StimulationConfig, "stimulation_tiny", sets)


def test_alpha_zero_reproduces_the_unperturbed_output(tiny_run, tmp_path):
    from fmrilm.brain.task_data import TaskData
    from fmrilm.evaluation.heldout import resolve_model_dir, resolve_tokenizer_dir, tokenize_betas
    from fmrilm.evaluation.task_eval import CAPTION_PROMPT
    from fmrilm.llm.checkpoint import load_brainlm
    from fmrilm.llm.generate import generate
    from fmrilm.stimulation.experiment import stimulate
    from fmrilm.tokenizer.model import BrainTokenizer

    cfg = _config(tiny_run, tmp_path / "unused")
    data = TaskData(tiny_run / "task_world")
    tokenizer = BrainTokenizer.from_pretrained(resolve_tokenizer_dir(tiny_run / "tokenizer"))
    model = load_brainlm(resolve_model_dir(tiny_run / "instruct"))
    scans = data.mean_betas(0, [1, 4, 7])
    plain = generate(model, [t[None] for t in tokenize_betas(tokenizer, scans)], [CAPTION_PROMPT] * 3,
                     max_new_tokens=cfg.max_new_tokens)
    vertices = np.arange(0, 2000, 7)
    assert stimulate(model, tokenizer, scans, vertices, 0.0, cfg) == plain
    # A large perturbation does change what the tokenizer sees.
    big = scans.copy()
    big[:, vertices] += 50.0 * scans[:, vertices].std(0)
    assert not np.array_equal(tokenize_betas(tokenizer, big), tokenize_betas(tokenizer, scans))


def test_stimulate_cli_writes_dose_response_and_surface_map(tiny_run, tmp_path):
    out = tmp_path / "stim"
    argv = ["stimulate", "--config", "stimulation_tiny", "--set", f"corpus={tiny_run / 'corpus'}",
            f"tokenizer={tiny_run / 'tokenizer'}", f"model={tiny_run / 'instruct'}", f"out={out}"]
    assert cli(argv) == 0
    summary = json.loads((out / "stimulation.json").read_text())
    assert set(summary["conditions"]) == {"target", "random", "other_category"}
    zero = [c["doses"][0] for c in summary["conditions"].values()]
    assert all(d["alpha"] == 0.0 for d in zero)
    assert zero[0]["captions"] == zero[1]["captions"] == zero[2]["captions"]
    for condition in summary["conditions"].values():
        assert condition["n_vertices"] == 50
        assert all(0.0 <= d["concept_rate"] <= 1.0 and np.isfinite(d["probe_semscore"]) for d in condition["doses"])
    assert np.isfinite(summary["specificity_vs_random"])
    # Scans come from stimuli whose reference captions do not already name the concept.
    from fmrilm.brain.task_data import TaskData

    stimuli = TaskData(tiny_run / "task_world").stimuli
    assert summary["concept_free_stimuli"] and summary["stimuli"]
    assert all(concept_rate(stimuli[m]["captions"], summary["concept_words"]) == 0 for m in summary["stimuli"])
    # Target and control patches come from the localizer and differ; random vertices lie in cortex.
    assert set(summary["vertices"]["target"]) != set(summary["vertices"]["other_category"])
    for name in ("dose_response.png", "vertices.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_bad_config_is_refused_before_writing(tiny_run, tmp_path):
    from fmrilm.stimulation.experiment import run_stimulation

    for extra, field in (({"target": "zebras"}, "target"), ({"alphas": "[1.0, 2.0]"}, "alphas"),
                         ({"other_category": "faces"}, "other_category")):
        with pytest.raises(InputError, match=field):
            run_stimulation(_config(tiny_run, tmp_path / "out", **extra))
        assert not (tmp_path / "out").exists()


def test_concept_rate_counts_whole_words():
    words = ["man", "people", "stop sign"]
    assert concept_rate(["a man on a horse", "a mango", "two People", "a stop sign"], words) == 0.75


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
