"""Few-shot phenotype pieces: window subsets of a run, balanced and spread example draws, LoRA fitted and restored."""

import numpy as np
import pytest
import torch
from test_llm_training import SCANS, _model, backbone  # noqa: F401  (module fixture)

from fmrilm.errors import InputError
from fmrilm.evaluation.rest_fewshot import (
    FewShotLoRA,
    RestFewShotConfig,
    _balanced,
    _in_context,
    _spread,
    lora_adapted,
    with_windows,
)
from fmrilm.seeds import stream


def _sample(subject: str, answer: str, n_windows: int = 3) -> dict:
    prompt = "Resting-state scan: " + " ".join(["<scan>"] * n_windows) + "\nIs this participant female or male?"
    return {"__key__": subject, "tokens.npy": SCANS[:n_windows],
            "json": {"subject": subject, "prompt": prompt, "answer": answer, "choices": ["female", "male"]}}


def test_a_run_keeps_evenly_spaced_windows_and_one_placeholder_each():
    sample = {"tokens.npy": np.arange(50).reshape(10, 5), "json": {"prompt": "Scan: <scan> <scan> <scan> <scan> <scan> "
                                                                  "<scan> <scan> <scan> <scan> <scan>\nSex?"}}
    prompt, tokens = with_windows(sample, 3)
    assert prompt == "Scan: <scan> <scan> <scan>\nSex?"
    np.testing.assert_array_equal(tokens[:, 0], [0, 20, 45])  # windows 0, 4 (4.5 rounds to even) and 9, as the corpus
    assert with_windows(sample, 0)[1].shape == (10, 5)


def test_examples_are_balanced_over_classes_or_the_pool_is_named_short():
    pool = [_sample(f"f{i}", "female") for i in range(3)] + [_sample(f"m{i}", "male") for i in range(5)]
    rng = stream(0, "eval.rest_fewshot_examples", 0, 6, 0)
    chosen = _balanced(pool, 6, ["female", "male"], rng)
    assert sorted(s["json"]["answer"] for s in chosen) == ["female"] * 3 + ["male"] * 3
    assert len({s["json"]["subject"] for s in chosen}) == 6
    assert "3 runs of class 'female'" in _balanced(pool, 8, ["female", "male"], rng)
    assert "multiple" in _balanced(pool, 3, ["female", "male"], rng)


def test_numeric_examples_are_spread_over_the_range_or_the_pool_is_named_short():
    pool = [{"json": {"subject": f"s{a}", "answer": str(a), "answer_type": "count"}} for a in (90, 20, 60, 40, 80, 30,
                                                                                              50, 70, 100)]
    chosen = _spread(pool, 3, stream(0, "eval.rest_fewshot_examples", 1, 3, 0))
    ages = sorted(int(s["json"]["answer"]) for s in chosen)
    assert len(ages) == 3 and ages[0] <= 40 and 50 <= ages[1] <= 70 and ages[2] >= 80  # one per third
    assert "9 runs; k = 10" in _spread(pool, 10, stream(0, "eval.rest_fewshot_examples", 1, 10, 0))


def test_lora_is_fitted_to_the_examples_and_restored_afterwards(backbone):  # noqa: F811
    model = _model(backbone)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    examples = [_sample("a", "female", 1), _sample("b", "male", 2)]
    with lora_adapted(model, examples, FewShotLoRA(steps=3, lr=0.02, micro_batch=1), seed=0) as losses:
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
        assert changed and all("lora_" in n for n in changed)  # only the adapters move
        assert losses[-1] < losses[0]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_in_context_examples_shrink_to_fit_or_are_reported(backbone):  # noqa: F811
    model = _model(backbone)
    model.max_length = 4096  # only the prompts' lengths are checked here; the tiny backbone holds 192
    cfg = RestFewShotConfig(corpus="c", tokenizer="t", model="m", out="o")
    examples, queries = [_sample("a", "female"), _sample("b", "male")], [_sample("q", "male")]
    prompts, used = _in_context(model, examples, queries, cfg)
    assert used["example_windows"] == 3 and len(prompts) == 1
    assert prompts[0][1].shape[0] == 3 * 3  # two examples' windows, then the query's
    assert prompts[0][0].count("<scan>") == 9 and "or male? female\n\n" in prompts[0][0]  # each example answered
    model.max_length = used["prompt_tokens"] + 8 - 1  # one token short of every window
    assert _in_context(model, examples, queries, cfg)[1]["example_windows"] < 3
    model.max_length = 40
    assert _in_context(model, examples, queries, cfg)[1]["status"] == "skipped"


def test_bad_settings_are_refused_by_name():
    for change, field in (({"ks": ()}, "ks"), ({"n_queries": -1}, "n_queries"),
                          ({"lora": FewShotLoRA(precision="fp16")}, "lora.precision")):
        with pytest.raises(InputError, match=field):
            RestFewShotConfig(corpus="c", tokenizer="t", model="m", out="o", **change).validate()
