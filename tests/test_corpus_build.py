"""Corpus build: leak-free splits, bad inputs refused before writing, and the CLI."""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

import numpy as np
import pytest
from tiny_configs import tiny_config

from fmrilm.brain.splits import SplitsConfig, stimulus_splits, write_run_splits
from fmrilm.config import load_config
from fmrilm.corpus import commands
from fmrilm.corpus.build import CorpusConfig, build_corpus, plan_corpus
from fmrilm.corpus.inputs import open_inputs
from fmrilm.corpus.samples import SampleBuilder
from fmrilm.corpus.splits import LeakageError, check_leakage
from fmrilm.corpus.toy import write_toy_inputs, write_toy_rest, write_toy_tokens
from fmrilm.errors import InputError


@pytest.fixture(scope="module")
def toy(tmp_path_factory, atlas):
    return write_toy_inputs(tmp_path_factory.mktemp("inputs"), atlas, n_stimuli=18, n_task_subjects=3,
                            repeats=3, n_rest_subjects=9)


def _splits(root, task="", rest=""):
    return write_run_splits(SplitsConfig(task_dataset=str(task), rest_dataset=str(rest), out=str(root / "splits.json"),
                                         heldout_task_subjects=1 if task else 0), overwrite=True)


def _cfg(paths, *overrides):
    return load_config(CorpusConfig, tiny_config("corpus_tiny"),
                       [f"{k}={v}" for k, v in paths.items()] + list(overrides))


@pytest.fixture(scope="module")
def plan(toy):
    cfg = _cfg(toy)
    inputs = open_inputs(cfg.task_dataset, cfg.task_tokens, cfg.rest_dataset, cfg.rest_tokens)
    return inputs, plan_corpus(cfg, inputs, progress=False)


def test_splits_do_not_leak(plan):
    inputs, p = plan
    stimuli = inputs.task.table("stimuli")
    novel = {i for i, r in enumerate(stimuli) if r["novel"]}
    assert novel and p.novel_categories == ["zebra"]
    splits_of = defaultdict(set)
    brain = [s.meta for s in p.samples if s.task != "text"]
    for m in brain:
        if m["stimulus"] is not None and m["split"] != "fewshot":
            splits_of[m["stimulus"]].add(m["split"])
        if m["split"] == "train":
            assert m["stimulus"] not in novel
            text = " ".join([m["prompt"], m["answer"]] + [s["answer"] for s in m["shots"]])
            assert not re.search(r"zebra", text, re.IGNORECASE)
        assert (m["subject"] in p.fewshot_subjects) == (m["split"] == "fewshot")
    # every stimulus — all its repeats and subjects — sits in exactly one split; novel ones in test
    assert all(len(v) == 1 for v in splits_of.values())
    assert all(splits_of[m] == {"test"} for m in novel if m in splits_of)
    assert {"train", "val", "test", "fewshot"} <= {m["split"] for m in brain}
    assert p.dropped_novel > 0  # toy stimuli 0, 4, 8... ask about zebras: dropped from training
    # the novel category's words still reach the LM through text-only training data
    assert any("zebra" in s.meta["answer"] and s.split == "train" for s in p.samples if s.task == "text")
    assert len(p.fewshot_subjects) == 3  # 2 rest + 1 task subject


def test_check_leakage_catches_violations(plan):
    inputs, p = plan
    metas = [dict(s.meta) for s in p.samples]
    check_leakage(metas, set(), ["zebra"], p.fewshot_subjects)
    test_sample = next(m for m in metas if m["split"] == "test" and m["stimulus"] is not None)
    moved = dict(test_sample, split="train")
    with pytest.raises(LeakageError, match="several splits"):
        check_leakage(metas + [moved], set(), [], p.fewshot_subjects)
    caption = next(m for m in metas if m["split"] == "train" and m["task"] == "caption")
    named = dict(caption, answer="two zebras")
    with pytest.raises(LeakageError, match="novel category"):
        check_leakage([named], set(), ["zebra"], set())


def test_stimulus_splits_fractions_and_novel():
    novel = np.array([False] * 20 + [True] * 3)
    split = stimulus_splits(novel, val_fraction=0.1, test_fraction=0.25, seed=3)
    assert list(split[20:]) == ["test"] * 3
    assert (split[:20] == "test").sum() == 5 and (split[:20] == "val").sum() == 2


def test_tokens_from_another_atlas_are_refused(toy, tmp_path, atlas):
    other = dict(atlas.describe(), fingerprint="0123456789abcdef")
    bad = write_toy_tokens(tmp_path / "tok", toy["task_dataset"], tokenizer_atlas=other)
    cfg = _cfg(dict(toy, task_tokens=str(bad)))
    with pytest.raises(InputError, match=r"atlas\.fingerprint.*does not match atlas schaefer100_fsaverage5"):
        build_corpus(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_tokens_of_the_wrong_dataset_are_refused(toy, tmp_path):
    cfg = _cfg(dict(toy, task_tokens=toy["rest_tokens"]))
    with pytest.raises(InputError, match="tokens"):
        build_corpus(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_short_run_is_refused_before_writing(toy, tmp_path, atlas):
    rest = write_toy_rest(tmp_path / "rest", atlas, n_subjects=4, n_timepoints=24)
    splits = _splits(tmp_path, toy["task_dataset"], rest)
    tokens = write_toy_tokens(tmp_path / "rest_tokens", rest, window=4, splits=splits)
    task_tokens = write_toy_tokens(tmp_path / "task_tokens", toy["task_dataset"], splits=splits)
    cfg = _cfg(dict(toy, rest_dataset=str(rest), rest_tokens=str(tokens), task_tokens=str(task_tokens),
                    splits=str(splits)))
    with pytest.raises(InputError, match=r"run too short to estimate FC: 24 TRs \(48 s at TR 2 s\); "
                                         r"need at least 34 TRs"):
        build_corpus(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_config_errors(toy, tmp_path):
    with pytest.raises(InputError, match="unknown task"):
        build_corpus(_cfg(toy, "samples.tasks=[caption,dance]"), tmp_path / "o", progress=False)
    with pytest.raises(InputError, match="needs its tokens"):
        build_corpus(_cfg({"task_dataset": toy["task_dataset"], "splits": toy["splits"]}), tmp_path / "o",
                     progress=False)
    with pytest.raises(InputError, match="no splits file given"):
        build_corpus(_cfg(dict(toy, splits="")), tmp_path / "o", progress=False)


def test_cli_build_and_inspect(toy, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "corpus"
    sets = [f"{k}={v}" for k, v in toy.items()] + ["samples.tasks=[caption,phenotype,text]"]
    args = parser.parse_args(["corpus", "build", "--config", tiny_config("corpus_tiny"), "--out", str(out),
                              "--set", *sets])
    assert args.handler(args) == 0
    args = parser.parse_args(["corpus", "inspect", str(out), "--verify", "--preview", "1"])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert re.search(r"caption\s+\d+\s+\d+\s+\d+", printed) and "match their sha256" in printed
    assert "prompt:" in printed and "vqa" in printed  # vqa row present, with zero counts


def test_builds_from_the_synthetic_task_world(tiny_task_world, tmp_path):
    splits = _splits(tmp_path, tiny_task_world)
    tokens = write_toy_tokens(tmp_path / "tokens", tiny_task_world, splits=splits)
    sets = [f"task_dataset={tiny_task_world}", f"task_tokens={tokens}", f"splits={splits}",
            "samples.tasks=[caption,vqa,text]"]
    cfg = load_config(CorpusConfig, tiny_config("corpus_tiny"), sets)
    summary = build_corpus(cfg, tmp_path / "corpus", progress=False)
    train = summary["splits"]["train"]["counts"]
    assert train["caption"] > 0 and train["vqa"] > 0 and train["text"] > 0
    assert set(summary["novel_categories"]) and "test" in summary["splits"]


def test_tokens_of_a_tokenizer_trained_on_other_splits_are_refused(toy, tmp_path):
    other = write_run_splits(SplitsConfig(task_dataset=toy["task_dataset"], rest_dataset=toy["rest_dataset"],
                                          out=str(tmp_path / "other.json"), seed=7), overwrite=True)
    with pytest.raises(InputError, match=r"was built on splits .* but this stage was handed .*other\.json"):
        build_corpus(_cfg(dict(toy, splits=str(other))), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_no_held_out_caption_is_training_text(plan):
    inputs, p = plan
    stimuli = inputs.task.table("stimuli")
    held = {s.meta["stimulus"] for s in p.samples if s.split in ("val", "test") and s.meta["stimulus"] is not None}
    held_captions = {c for m in held for c in stimuli[m]["captions"]}
    train_text = {s.meta["answer"] for s in p.samples if s.task == "text" and s.split == "train"}
    assert held_captions and not held_captions & train_text
    with pytest.raises(LeakageError, match="test caption in the training text"):
        check_leakage([s.meta for s in p.samples] + [
            {"task": "text", "split": "train", "answer": sorted(held_captions)[0]}], set(), [], p.fewshot_subjects,
            held_captions)


def test_phenotype_paradigms_brain_descriptors_and_text_only(toy):
    """fMRI-LM's three inputs: tokens, tokens + the run's descriptor text, the descriptor text alone."""
    cfg = _cfg(toy, "samples.phenotype_inputs=[brain,brain_descriptors,descriptors]", "samples.phenotype_scans=0")
    inputs = open_inputs(cfg.task_dataset, cfg.task_tokens, cfg.rest_dataset, cfg.rest_tokens)
    samples = [s for s in plan_corpus(cfg, inputs, progress=False).samples if s.task == "phenotype"]
    by = defaultdict(list)
    for s in samples:
        by[s.meta["paradigm"]].append(s)
    assert set(by) == {"brain", "brain_descriptors", "descriptors"}
    assert len(by["brain"]) == len(by["brain_descriptors"]) == len(by["descriptors"])
    def zero_shot(group):
        return [s for s in group if not s.meta["shots"]]

    n_windows = inputs.rest_tokens.tokens.shape[1]
    for s in zero_shot(by["brain"] + by["brain_descriptors"]):
        # every window (rest patch) of the run, in order, in one sample (samples.phenotype_scans: 0)
        assert [ref[2] for ref in s.scans] == list(range(n_windows))
        assert s.meta["prompt"].count("<scan>") == n_windows  # one placeholder per window
    for s in zero_shot(by["descriptors"]):
        assert s.scans == () and "<scan>" not in s.meta["prompt"]
    for s in zero_shot(by["brain_descriptors"] + by["descriptors"]):
        assert s.meta["prompt"].startswith("Description of the resting-state run: ")
        assert re.search(r"[Ww]ithin-network|within networks", s.meta["prompt"])  # FC, from the whole run
    # the brain-only questions are those of a corpus without paradigms, draw for draw (shots aside)
    plain = [s for s in plan_corpus(_cfg(toy, "samples.phenotype_scans=0"), inputs, progress=False).samples
             if s.task == "phenotype"]
    assert [s.meta["prompt"].split("\n\n")[-1] for s in plain] == \
        [s.meta["prompt"].split("\n\n")[-1] for s in by["brain"]]
    with pytest.raises(InputError, match="samples.phenotype_inputs"):
        _cfg(toy, "samples.phenotype_inputs=[brain,eyes]").validate()


def test_phenotype_samples_carry_the_configured_windows_of_the_run(toy):
    inputs = open_inputs(toy["task_dataset"], toy["task_tokens"], toy["rest_dataset"], toy["rest_tokens"])
    n_windows = inputs.rest_tokens.tokens.shape[1]
    assert n_windows >= 3

    def phenotype(k):
        plan = plan_corpus(_cfg(toy, f"samples.phenotype_scans={k}", "samples.shots=0"), inputs, progress=False)
        return [s for s in plan.samples if s.task == "phenotype"]

    whole, spread, single = phenotype(0), phenotype(2), phenotype(1)
    assert {len(s.scans) for s in whole} == {n_windows}
    assert {tuple(r[2] for r in s.scans) for s in spread} == {(0, n_windows - 1)}  # evenly spaced, ends included
    # one window per sample: a sample per window of rest_windows_per_subject (the corpus_tiny 3)
    assert {len(s.scans) for s in single} == {1} and len(single) == 3 * len(whole)


def test_site_questions_name_the_datasets_sites_and_need_two_of_them(toy):
    inputs = open_inputs(toy["task_dataset"], toy["task_tokens"], toy["rest_dataset"], toy["rest_tokens"])
    sites = sorted({r["site"] for r in inputs.rest.table("subjects")})
    assert sites == ["site-1", "site-2"]
    plan = plan_corpus(_cfg(toy, "samples.shots=0"), inputs, progress=False)
    site = [s for s in plan.samples if s.task == "phenotype" and s.meta["phenotype"] == "site"]
    rows = inputs.rest.table("subjects")
    assert len(site) == len(rows)  # corpus_tiny: one sample of evenly spaced windows per subject
    for s in site:
        assert s.meta["choices"] == sites and s.meta["answer"] in sites and s.meta["answer_type"] == "class"
        assert "site-1 or site-2" in s.meta["prompt"]
    # one site (or none recorded): a question with a single answer teaches nothing, so none is asked
    builder = SampleBuilder(inputs, _cfg(toy).samples, seed=0, rest_split=np.array(["train"] * len(rows)))
    for value in ("site-1", None):
        builder.rest_subjects = [{**r, "site": value} for r in rows]
        assert {s.meta["phenotype"] for s in builder.phenotype()} == {"sex", "age", "diagnosis"}
