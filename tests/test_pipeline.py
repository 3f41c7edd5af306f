"""The main job at test size: every stage runs once, finished stages are skipped, --force redoes."""

import json
from pathlib import Path

import pytest

from fmrilm.errors import InputError
from fmrilm.pipeline import STAGES, load_pipeline_config, run_pipeline


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    cfg = load_pipeline_config("pipeline_tiny", [f"run_dir={run_dir}"])
    report = run_pipeline(cfg)
    return cfg, run_dir, report


def test_every_configured_stage_ran_in_order_and_left_an_artifact(tiny_run):
    cfg, run_dir, report = tiny_run
    state = json.loads((run_dir / "stages.json").read_text())
    expected = [name for name in STAGES if name in cfg.stages]
    assert list(state) == expected and list(report["timings_s"]) == expected
    for path in state.values():
        assert Path(path).exists()
    corpus = json.loads((run_dir / "corpus" / "corpus.json").read_text())
    assert corpus["tokenizer"]["fingerprint"]  # one tokenizer for task and rest tokens
    # stage 3 trained with retrieval-augmented prompts; its export carries the retriever, which
    # load_brainlm restores, so the evaluation also scores the ablation without it
    assert (Path(state["instruct"]) / "retriever" / "retriever.json").is_file()
    report = json.loads((Path(state["evaluation"]) / "report.json").read_text())
    assert {"no_retrieval", "retrieved_caption"} <= set(report["captioning"]["conditions"])


def test_retrieved_captions_prefix_task_scans_only(tiny_run):
    from fmrilm.llm.checkpoint import load_brainlm
    from fmrilm.llm.generate import generate
    from fmrilm.retrieval.caption_prompts import PREFIX
    from fmrilm.stages import lm_common
    from fmrilm.stages.instruct import instruction_encoder

    _, run_dir, _ = tiny_run
    state = json.loads((run_dir / "stages.json").read_text())
    model = load_brainlm(state["instruct"])
    samples, _ = lm_common.read_split(state["corpus"], "train", ["caption", "phenotype"], progress=False)
    task = next(s for s in samples if s["json"]["source"] == "task" and not s["json"]["shots"])
    rest = next(s for s in samples if s["json"]["source"] == "rest" and not s["json"]["shots"])
    encode = instruction_encoder(model, [task, rest])
    prompts = [model.tokenizer.decode([t for t in encode(s, i)["input_ids"] if t < model.vocab.n_text])
               for i, s in enumerate([task, rest])]
    assert PREFIX.strip() in prompts[0] and PREFIX.strip() not in prompts[1]
    # generation: retrieve=False prompts exactly as a model without a retriever does
    scan = [task["tokens.npy"]]
    plain = generate(model, scan, [task["json"]["prompt"]], max_new_tokens=5, retrieve=False)
    model.prompt_retriever = None
    assert plain == generate(model, scan, [task["json"]["prompt"]], max_new_tokens=5)


def test_a_second_run_skips_finished_stages_and_force_redoes_the_rest(tiny_run):
    cfg, run_dir, _ = tiny_run
    assert run_pipeline(cfg)["timings_s"] == {}
    redone = run_pipeline(cfg, force=["corpus"])["timings_s"]
    configured = [name for name in STAGES if name in cfg.stages]
    assert list(redone) == configured[configured.index("corpus"):]


def test_unknown_stage_names_are_refused(tiny_run):
    cfg, _, _ = tiny_run
    with pytest.raises(InputError, match="unknown stage"):
        run_pipeline(cfg, force=["tokeniser"])
