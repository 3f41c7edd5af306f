"""Next-scan R² on the real brainspace run, held out from training, and the pipeline stages behind it."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import pytest
from test_evaluation_runner import build_tiny_run
from tiny_configs import tiny_config

from fmrilm.artifacts import resolve_model_dir, resolve_tokenizer_dir
from fmrilm.corpus.heldout import load_heldout
from fmrilm.errors import InputError
from fmrilm.evaluation.rest_eval import phenotype_section, real_run_temporal, real_run_tokens, rest_section
from fmrilm.io import write_json
from fmrilm.pipeline import STAGES, load_pipeline_config

CFG = SimpleNamespace(n_temporal=8, batch_size=16, seed=0, phenotype_windows=0)
SCORES = ("model", "persistence", "linear_ar", "tokenizer_ceiling")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_task_world):
    """A tiny run with rest data, plus the real run imported and tokenized as the pipeline does."""
    from fmrilm.brain.rest_run import RestImportConfig, import_configured_run
    from fmrilm.llm.checkpoint import load_brainlm
    from fmrilm.tokenizer.model import BrainTokenizer
    from fmrilm.tokenizer.tokens import write_tokens_dataset

    run = build_tiny_run(tmp_path_factory.mktemp("real_rest"), tiny_task_world, rest=True)
    tok_dir = resolve_tokenizer_dir(run / "tokenizer")
    tokenizer = BrainTokenizer.from_pretrained(tok_dir).eval()
    import_configured_run(RestImportConfig(), run / "real_rest")
    write_tokens_dataset(tokenizer, run / "real_rest", run / "real_rest_tokens", tokenizer_dir=str(tok_dir))
    model = load_brainlm(resolve_model_dir(run / "instruct"))
    return run, tokenizer, model


def test_rest_section_scores_the_last_trs_of_the_real_run(run):
    run, tokenizer, model = run
    heldout = load_heldout(run / "corpus")
    assert real_run_tokens(heldout) is None  # not recorded as a finished stage: not evaluated

    write_json(run / "stages.json", {"real_rest_tokens": str(run / "real_rest_tokens")})
    result = rest_section(model, tokenizer, heldout, CFG)["temporal_real_run"]
    assert result["source"] == "brainspace" and result["n_timepoints"] == 652 and result["tr"] == 1.4
    assert result["n_targets"] == CFG.n_temporal and result["first_target_tr"] == 652 - CFG.n_temporal
    temporal = [s for s in heldout.test_samples if s["json"]["task"] == "temporal"]
    assert result["n_context"] == len(temporal[0]["tokens.npy"]) - 1  # the context the LM was trained with
    assert all(math.isfinite(result[k]) and result[k] <= 1.0 for k in SCORES)
    # Real BOLD is slow: the previous TR and an AR(1) fitted on the earlier TRs predict the next one well.
    assert result["persistence"] > 0.3 and result["linear_ar"] > 0.3


def test_phenotypes_sit_beside_base_rates_from_the_training_subjects(run):
    from collections import Counter

    from fmrilm.brain.store import Dataset

    run, _, model = run
    heldout = load_heldout(run / "corpus")
    rest = Dataset(heldout.input_path("rest_dataset"), kind="rest")
    excluded = set(heldout.summary.get("fewshot_subjects", [])) | heldout.untrained_rest_subjects
    section = phenotype_section(model, heldout.test_samples, rest, excluded, CFG)
    rows = {r["subject"]: r for r in rest.table("subjects")}
    for name, result in section.items():
        tested = {s["json"]["subject"] for s in heldout.test_samples if s["json"].get("phenotype") == name}
        train = [r[name] for subject, r in rows.items() if subject not in tested | excluded]
        assert result["n_subjects"] == len(tested) and train
        if name == "age":
            chance = result["constant_mean"]
            assert chance["value"] == pytest.approx(sum(train) / len(train))
            keys = ("mae",)
        else:
            chance = result["majority_class"]
            counts = Counter(train)
            assert counts[chance["label"]] == max(counts.values())  # the TRAINING subjects' majority
            assert chance["accuracy"] == pytest.approx(sum(rows[s][name] == chance["label"] for s in tested)
                                                       / len(tested))
            keys = ("accuracy", "balanced_accuracy", "auc")
            two_classes = len({rows[s][name] for s in tested}) == 2
            # the LM's AUC comes from its constrained-decoding probabilities, the FC baseline's from its logistic ones
            assert (result["model"]["auc"] is not None) == (result["fc_baseline"]["auc"] is not None) == two_classes
        for scores in (result["model"], result["fc_baseline"], chance):
            for key in keys:
                if scores[key] is None:
                    continue
                low, high = scores["ci95"][key]
                # a resampled mean brackets the mean; AUC and balanced accuracy need not be centred
                assert low <= scores[key] <= high if key in ("accuracy", "mae") else 0.0 <= low <= high <= 1.0


def test_targets_are_capped_by_the_run_length_and_context(run):
    run, tokenizer, model = run
    result = real_run_temporal(model, tokenizer, run / "real_rest_tokens", n_context=2, n_targets=3)
    assert result["n_targets"] == 3 and result["first_target_tr"] == 649
    assert real_run_temporal(model, tokenizer, run / "real_rest_tokens", n_context=652, n_targets=3)["status"] == \
        "skipped"


def test_tokens_of_another_tokenizer_are_refused(run, tmp_path):
    run, tokenizer, model = run
    other = tmp_path / "tokens"
    shutil.copytree(run / "real_rest_tokens", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer"]["fingerprint"] = "0" * 16
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="fingerprint"):
        real_run_temporal(model, tokenizer, other, n_context=2, n_targets=3)


def test_pipeline_imports_the_real_run_after_training_and_before_evaluation():
    order = list(STAGES)
    # the search indexes feed stage 3's prompts; nothing trains on the real run
    assert order.index("joint") < order.index("retrieval") < order.index("instruct") < order.index("real_rest") \
        < order.index("real_rest_tokens") < order.index("evaluation")
    for name in ("demo", tiny_config("pipeline_tiny")):
        assert {"retrieval", "real_rest", "real_rest_tokens"} <= set(load_pipeline_config(name).stages)
