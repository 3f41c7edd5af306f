"""`fmrilm eval` end to end on a tiny run: every section present, controls beside each figure, finite.

Also holds :func:`build_tiny_run`, the tiny run directory ``test_stimulation.py`` imports: the tiny
task world, a stage-1 tokenizer trained for a few steps, its tokens, a caption/VQA corpus, a
bootstrapped tiny backbone and an untrained BrainLM saved as the stage-3 export.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_configs import tiny_config

import fmrilm.cli
from fmrilm.errors import InputError

BOOT = dict(vocab_size=420, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
            max_position_embeddings=1024, seed=0)


def build_tiny_run(root: Path, world: Path, rest: bool = False) -> Path:
    """A run directory laid out like the pipeline's (task_world, tokenizer, corpus, instruct); with
    `rest`, also the tiny rest population tokenized as vertex scans, and rest tasks in the corpus."""
    from fmrilm.brain.splits import SplitsConfig, write_run_splits
    from fmrilm.brain.store import Dataset
    from fmrilm.config import load_config
    from fmrilm.corpus.build import CorpusConfig, build_corpus
    from fmrilm.llm.backbone import bootstrap_backbone
    from fmrilm.llm.checkpoint import save_brainlm
    from fmrilm.llm.config import BootstrapConfig, LLMConfig, ScanConditionSettings
    from fmrilm.llm.peft_setup import build_brainlm
    from fmrilm.tokenizer.model import BrainTokenizer
    from fmrilm.tokenizer.tokens import write_tokens_dataset

    run = root / "run"
    run.mkdir()
    (run / "task_world").symlink_to(world)
    datasets = [f"task_dataset={world}"]
    if rest:
        from fmrilm.brain.rest_world import RestWorldConfig, generate_rest_population

        generate_rest_population(load_config(RestWorldConfig, tiny_config("rest_world_tiny")), run / "rest_world")
        datasets.append(f"rest_dataset={run / 'rest_world'}")
    splits = write_run_splits(load_config(SplitsConfig, tiny_config("splits_tiny"),
                                          [*datasets, f"out={run / 'splits.json'}"]))
    cmd = [sys.executable, "-m", "fmrilm.stages.tokenizer", "--config", tiny_config("tokenizer_tiny"), "--set",
           f"data.dataset={world}", f"data.splits={splits}", f"out_dir={run / 'tokenizer'}", "tokenizer.input=task",
           "tokenizer.contrastive=none", "engine.max_steps=4", "engine.micro_batch_size=16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, DS_ACCELERATOR="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tok_dir,) = (run / "tokenizer").glob("tokenizer_*")
    tokenizer = BrainTokenizer.from_pretrained(tok_dir)
    write_tokens_dataset(tokenizer, world, run / "task_tokens", tokenizer_dir=str(tok_dir))
    sets = [f"task_dataset={world}", f"task_tokens={run / 'task_tokens'}", "samples.shots=0",
            f"splits={splits}", "samples.tasks=[caption, vqa, text]"]
    if rest:
        write_tokens_dataset(tokenizer, run / "rest_world", run / "rest_tokens", tokenizer_dir=str(tok_dir))
        sets = [*sets[:-1], "samples.tasks=[caption, vqa, phenotype, temporal, text]",
                "samples.phenotype_inputs=[brain, brain_descriptors, descriptors]",
                f"rest_dataset={run / 'rest_world'}", f"rest_tokens={run / 'rest_tokens'}"]
    cfg = load_config(CorpusConfig, tiny_config("corpus_tiny"), sets)
    build_corpus(cfg, run / "corpus", progress=False)
    stimuli = Dataset(world).table("stimuli")
    texts = [c for row in stimuli for c in row["captions"]] + [qa["question"] for row in stimuli for qa in row["qa"]]
    backbone = bootstrap_backbone(texts, run / "backbone", BootstrapConfig(**BOOT))
    model = build_brainlm(LLMConfig(backbone=str(backbone), codebook_size=tokenizer.vocab_size,
                                    scan_condition=ScanConditionSettings(tokens_per_scan=tokenizer.tokens_per_scan)),
                          tokenizer.code_embeddings())
    save_brainlm(model, run / "instruct" / "stage3_instruct-tiny-step000000")
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_task_world):
    return build_tiny_run(tmp_path_factory.mktemp("eval"), tiny_task_world, rest=True)


def cli(argv) -> int:
    """`fmrilm ...` in-process with this package's commands registered."""
    modules = fmrilm.cli.COMMAND_MODULES
    extra = ("fmrilm.evaluation.commands", "fmrilm.stimulation.commands")
    fmrilm.cli.COMMAND_MODULES = (*modules, *(m for m in extra if m not in modules))
    try:
        return fmrilm.cli.main(argv)
    finally:
        fmrilm.cli.COMMAND_MODULES = modules


def _finite_numbers(node, path="report"):
    """Every int/float leaf of a nested JSON value, with its path."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _finite_numbers(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _finite_numbers(v, f"{path}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "eval"
    argv = ["eval", "--config", tiny_config("eval_tiny"), "--set", f"corpus={tiny_run / 'corpus'}",
            f"tokenizer={tiny_run / 'tokenizer'}", f"model={tiny_run / 'instruct'}", f"out={out}"]
    assert cli(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def test_report_has_every_section_with_controls(report):
    out, rep = report
    assert {"captioning", "vqa", "retrieval", "zero_shot", "few_shot", "rest", "targets", "examples"} <= set(rep)
    assert {"model", "shuffled", "text_only", "ridge_decoder", "ideal_observer"} <= set(rep["captioning"])
    for condition in ("model", "shuffled", "text_only"):
        assert 0.0 <= rep["vqa"][condition]["overall"] <= 1.0
    assert {"brain_embedder_tokens", "continuous_tokens", "ridge", "ideal_observer"} <= set(rep["retrieval"])
    assert rep["captioning"]["model"]["SPICE"] is None and "SPICE" in rep["captioning"]["model"]["unavailable"]
    adaptation = rep["few_shot"]["subject_adaptation"]
    assert adaptation["subject"] == "sub-03"  # the tiny world's last subject, unseen by tokenizer and LM
    assert list(adaptation["conditions"]) == ["k=0", "k=4", "k=16", "reference sub-01"]
    assert "## Held-out-subject adaptation" in (out / "report.md").read_text()
    assert {"sex", "diagnosis", "site", "age"} <= set(rep["rest"]["phenotype"])  # rest_world_tiny: two sites
    site = rep["rest"]["phenotype"]["site"]
    assert site["fc_baseline"]["n"] == site["model"]["n"] and site["ideal_observer"]["accuracy"] >= 0.5
    for result in rep["rest"]["phenotype"].values():
        assert {"model", "fc_baseline", "network_fc_baseline", "ideal_observer"} <= set(result)  # synthetic: it has one
        assert {"model_brain_descriptors", "model_descriptors"} <= set(result)  # fMRI-LM's paradigms b and c
        assert result["model_descriptors"].get("n") == result["model"].get("n")  # the same test subjects
    assert {"model", "persistence", "linear_ar", "tokenizer_ceiling"} <= set(rep["rest"]["temporal"])
    assert len(rep["examples"]) == 3 and all(ex["generated"] is not None for ex in rep["examples"])
    for name in ("report.md", "brain_map.png", "items.json"):
        assert (out / name).is_file()
    assert (out / "brain_map.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Captioning" in (out / "report.md").read_text()


def test_item_paired_targets_carry_a_bootstrap_interval(report):
    out, rep = report
    targets = rep["targets"]
    for name in ("caption_semscore_vs_shuffled", "caption_semscore_minus_ridge"):
        low, high = targets[name]["ci95"]
        assert low <= high
    low, high = targets["caption_semscore_minus_ridge"]["ci95"]
    assert low <= targets["caption_semscore_minus_ridge"]["measured"] <= high  # the bootstrap of a mean centres on it
    # the VQA ratio has an interval unless the shuffled control never scored (undefined ratio)
    assert ("ci95" in targets["vqa_vs_shuffled"]) == (rep["vqa"]["shuffled"]["overall"] > 0)
    low, high = targets["top1_minus_ridge"]["ci95"]  # per-query hits of both heads, query stimuli resampled
    assert low <= targets["top1_minus_ridge"]["measured"] <= high
    assert "95 % CI (stimuli resampled)" in (out / "report.md").read_text()


def test_controls_base_rates_and_bounds_are_reported(report):
    _, rep = report
    cap = rep["captioning"]
    assert cap["shuffled"]["n_derangements"] == 3 and len(cap["shuffled"]["per_derangement"]) == 3
    assert rep["vqa"]["shuffled"]["n_derangements"] == 3
    # no retrieval decoder exceeds the best training caption; the ideal observer picks from that bank
    assert {"bank_ceiling", "ideal_observer"} <= set(cap["conditions"])
    decoders = [c for c in ("ridge_decoder", "ideal_observer", "retrieved_caption") if c in cap]
    assert cap["bank_ceiling"]["semscore"] >= max(cap[c]["semscore"] for c in decoders) - 1e-6
    ret = rep["retrieval"]["brain_embedder_tokens"]["brain_to_caption"]
    assert rep["retrieval"]["brain_embedder_tokens"]["n_way"] <= rep["retrieval"]["brain_embedder_tokens"]["n_distinct"]
    assert 0 <= ret["top1"] <= 1
    for k, row in rep["few_shot"]["in_context"].items():
        assert ("no_retrieval" in row) == row["retrieval"], k  # both ways for a model with a retriever


def test_vqa_asks_distinct_questions_per_item_and_counts_every_answer(report):
    out, rep = report
    vqa = json.loads((out / "items.json").read_text())["vqa"]
    items = np.asarray(vqa["item"])
    assert len(vqa["question"]) == len(vqa["model"]) == len(items) == rep["vqa"]["model"]["n"]
    assert (np.diff(items) >= 0).all() and np.bincount(items).max() == 2  # eval_tiny: 2 per item
    for i in np.unique(items):
        asked = [q for q, row in zip(vqa["question"], items) if row == i]
        assert len(set(asked)) == len(asked)


def test_vqa_questions_take_at_most_what_an_item_has():
    from fmrilm.evaluation.task_eval import TaskItems, vqa_questions

    qa = [{"question": f"q{j}?", "answer": str(j), "type": "what"} for j in range(4)]
    stimuli = [{"qa": qa[:1]}, {"qa": qa}, {"qa": qa[:3]}]
    items = TaskItems(np.array([0, 0, 1]), np.array([0, 1, 2]), np.zeros((3, 2), np.int64), stimuli)
    asked = vqa_questions(items, seed=0, per_item=3)
    assert asked["item"] == [0, 1, 1, 1, 2, 2, 2]
    assert asked["question"][0] == "q0?" and sorted(asked["question"][4:]) == ["q0?", "q1?", "q2?"]
    assert all(f"q{a}?" == q for q, a in zip(asked["question"], asked["answer"]))
    assert vqa_questions(items, seed=0, per_item=3) == asked  # seeded


def test_report_numbers_are_finite(report):
    _, rep = report
    numbers = list(_finite_numbers(rep))
    assert len(numbers) > 50
    bad = [(p, v) for p, v in numbers if not math.isfinite(v)]
    assert not bad, bad[:5]


def test_ideal_observer_beats_chance_and_shuffled_control_is_deranged(report, tiny_run):
    _, rep = report
    observer = rep["retrieval"]["ideal_observer"]["brain_to_caption"]["top1"]
    assert observer > 3.0 / rep["retrieval"]["ideal_observer"]["n_way"]  # the simulator's own model decodes
    items = json.loads((report[0] / "items.json").read_text())
    assert items["captions"]["text_only"] == [items["captions"]["text_only"][0]] * len(items["stimulus"])


def test_eval_refuses_existing_output_and_missing_corpus(report, tmp_path, capsys):
    out, _ = report
    paths = [f"corpus={tmp_path / 'none'}", f"tokenizer={tmp_path / 'none'}", f"model={tmp_path / 'none'}"]
    assert cli(["eval", "--config", tiny_config("eval_tiny"), "--set", *paths, f"out={out}"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli(["eval", "--config", tiny_config("eval_tiny"), "--set", *paths, f"out={tmp_path / 'new'}"]) == 2
    assert "corpus.json" in capsys.readouterr().err and not (tmp_path / "new").exists()
    # a run path left empty is named before anything is opened (eval_tiny leaves them to --set)
    assert cli(["eval", "--config", tiny_config("eval_tiny"), "--set", paths[0], f"out={tmp_path / 'new'}"]) == 2
    assert "field 'tokenizer': required" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_ask_answers_about_one_scan(tiny_run, capsys):
    assert cli(["ask", "--run", str(tiny_run), "--scan", "sub-01/stim-000003", "--json", "--max-new-tokens", "4",
                "What is in the image?"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["subject"] == "sub-01" and result["stimulus"] == "stim-000003"
    assert isinstance(result["answer"], str)
    rest = ["ask", "--run", str(tiny_run), "--json", "--max-new-tokens", "3", "Is this participant female or male?"]
    assert cli([*rest, "--rest", "1", "--window", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from fmrilm.brain.store import Dataset

    first = Dataset(tiny_run / "rest_world").table("subjects")[1]
    assert (result["subject"], result["window"]) == (first["subject"], 2) and isinstance(result["answer"], str)
    assert result["phenotypes"]["sex"] == first["sex"]
    assert cli([*rest, "--rest", "sub-nobody"]) == 2 and "no such subject" in capsys.readouterr().err
    assert cli([*rest, "--rest", "0", "--window", "999"]) == 2 and "windows" in capsys.readouterr().err
    from fmrilm.brain.task_data import TaskData
    from fmrilm.retrieval.search import parse_scan_id

    data = TaskData(tiny_run / "task_world")
    assert parse_scan_id(data, "1/5") == (1, 5)
    with pytest.raises(InputError, match="SUBJECT/STIMULUS"):
        parse_scan_id(data, "sub-01")
    with pytest.raises(InputError, match="stimulus"):
        parse_scan_id(data, "sub-01/stim-999999")


def test_ask_backbone_repoints_a_lora_model_at_its_base(tiny_run, tmp_path, capsys):
    """A run whose LoRA base is at neither recorded place (moved, or made on another machine) says
    "pass --backbone PATH"; `ask --backbone` then loads that base (the same checkpoint)."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    (run / "task_world").symlink_to((tiny_run / "task_world").resolve())
    for part in ("tokenizer", "instruct"):
        shutil.copytree(tiny_run / part, run / part)
    base = shutil.copytree(tiny_run / "backbone", tmp_path / "models" / "base")
    (model,) = (run / "instruct").glob("stage3_*")
    meta = json.loads((model / "brainlm.json").read_text())
    assert meta["weights"] == "adapter"
    meta["base"]["path"] = str(tmp_path / "elsewhere" / "backbone")
    (model / "brainlm.json").write_text(json.dumps(meta))
    ask = ["ask", "--run", str(run), "--scan", "0/3", "--json", "--max-new-tokens", "2", "What is it?"]
    assert cli(ask) == 2
    err = capsys.readouterr().err
    assert "elsewhere/backbone" in err and "pass --backbone PATH" in err
    assert cli([*ask, "--backbone", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert cli([*ask, "--backbone", str(base)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stimulus"] == "stim-000003"


def test_ideal_observer_log_likelihood_prefers_the_true_candidate():
    from fmrilm.evaluation.ideal_observer import log_likelihoods, n_way_from_scores

    rng = np.random.default_rng(0)
    clean = rng.normal(size=(7, 40))
    scans = clean + 0.05 * rng.normal(size=clean.shape)
    ll = log_likelihoods(scans, clean, np.full(40, 1.0), n_repeats=3)
    assert (ll.argmax(1) == np.arange(7)).all()
    # LL is -sum((x - c)^2 / sd^2) exactly: compare with the direct formula
    direct = -(((scans[:, None] - clean[None]) ** 2) * 3.0).sum(-1)
    assert np.allclose(ll, direct)
    result = n_way_from_scores(ll, n_way=5, n_draws=4, seed=0)
    assert result["brain_to_caption"]["top1"] == 1.0 and result["n_way"] == 5


def test_phenotype_questions_keep_the_first_windows_of_each_subject():
    from fmrilm.errors import InputError
    from fmrilm.evaluation.rest_eval import _first_windows

    items = [{"json": {"subject": s, "window": w}} for s, w in (("a", 0), ("b", 0), ("a", 1), ("a", 2), ("b", 1))]
    assert [(i["json"]["subject"], i["json"]["window"]) for i in _first_windows(items, 1)] == [("a", 0), ("b", 0)]
    assert len(_first_windows(items, 2)) == 4 and _first_windows(items, 0) == items
    with pytest.raises(InputError, match="phenotype_windows"):
        _first_windows(items, -1)
