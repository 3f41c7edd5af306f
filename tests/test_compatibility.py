"""One compatibility check for every command that combines artifacts (ask, eval, stimulate, search --scan).

Mismatched tokenizer, model, corpus, search indexes and splits are refused with exit 2 before any
weights are loaded (a spy makes loading fail the test), naming both sides, and nothing is written.
The mismatches are cheap variants of one tiny run: tokenizers saved fresh (another seed, K=1024,
another code width), a K=1024 BrainLM on the same backbone, a stage export's ``stage.json``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_evaluation_runner import build_tiny_run, cli
from tiny_configs import tiny_config

from fmrilm.artifacts import check_compatible, read_tokenizer_record
from fmrilm.errors import InputError

SCAN = ["--scan", "sub-01/stim-000003"]


def _tokenizer_like(tok_dir: Path, out: Path, seed: int, code_dim=None, codebook_size=None) -> Path:
    """A fresh (untrained) tokenizer of `tok_dir`'s config and provenance, with other weights or sizes."""
    from fmrilm.brain.atlas import Atlas
    from fmrilm.config import from_dict
    from fmrilm.tokenizer.config import TokenizerConfig
    from fmrilm.tokenizer.model import BrainTokenizer

    meta = json.loads((tok_dir / "config.json").read_text())
    cfg = from_dict(TokenizerConfig, meta["tokenizer"])
    cfg.code_dim = code_dim or cfg.code_dim
    cfg.quantizer = dataclasses.replace(cfg.quantizer, codebook_size=codebook_size or cfg.quantizer.codebook_size)
    torch.manual_seed(seed)
    tokenizer = BrainTokenizer.for_atlas(cfg, Atlas.schaefer(100))
    tokenizer.provenance = meta["provenance"]
    return tokenizer.save_pretrained(out)


def _run_dir(root: Path, name: str, world: Path, tokenizer: Path, instruct: Path) -> Path:
    """A run directory as `fmrilm ask` reads it, its parts linked from elsewhere."""
    run = root / name
    run.mkdir()
    for part, target in (("task_world", world), ("tokenizer", tokenizer), ("instruct", instruct)):
        (run / part).symlink_to(target)
    return run


@pytest.fixture(scope="module")
def art(tmp_path_factory, tiny_task_world):
    from fmrilm.llm.checkpoint import save_brainlm
    from fmrilm.llm.config import LLMConfig, ScanConditionSettings
    from fmrilm.llm.peft_setup import build_brainlm
    from fmrilm.retrieval.brain_embedder import BrainEmbedderConfig
    from fmrilm.retrieval.search import SearchIndexConfig, build_search_indexes
    from fmrilm.tokenizer.model import BrainTokenizer

    root = tmp_path_factory.mktemp("compat")
    run = build_tiny_run(root, tiny_task_world)
    build_search_indexes(SearchIndexConfig(corpus=str(run / "corpus"), tokenizer=str(run / "tokenizer"),
                                           out=str(run / "retrieval"), max_train_items=30,
                                           embedder=BrainEmbedderConfig(hidden=16, n_blocks=1, epochs=1)),
                         progress=False)
    (tok,) = (run / "tokenizer").glob("tokenizer_*")
    (model,) = (run / "instruct").glob("stage3_*")
    seed1 = _tokenizer_like(tok, root / "tok_seed1", seed=1)
    k1024 = _tokenizer_like(tok, root / "tok_k1024", seed=0, codebook_size=1024)
    wide = _tokenizer_like(tok, root / "tok_wide", seed=0, code_dim=16)
    big = BrainTokenizer.from_pretrained(k1024)
    model1024 = save_brainlm(build_brainlm(LLMConfig(backbone=str(run / "backbone"), codebook_size=1024,
                                                     scan_condition=ScanConditionSettings(tokens_per_scan=100)),
                                           big.code_embeddings()), root / "instruct1024" / model.name)
    # what a training stage writes beside its export: the tokenizer it trained on, the splits
    staged = root / "staged" / model.name
    shutil.copytree(model, staged)
    splits = json.loads((run / "corpus" / "corpus.json").read_text())["run_splits"]
    fingerprint = read_tokenizer_record(tok).fingerprint
    (staged / "stage.json").write_text(json.dumps({"stage": "instruct", "splits": splits, "tokenizer": {
        "tag": "vqK64L1", "path": str(tok), "fingerprint": fingerprint}}))
    return SimpleNamespace(root=root, run=run, world=tiny_task_world, tok=tok, model=model, seed1=seed1,
                           k1024=k1024, wide=wide, model1024=model1024, staged=staged, splits=splits)


@pytest.fixture
def no_loading(monkeypatch):
    """Loading tokenizer or model weights fails the command (exit 1, not 2): the check must come first."""
    import fmrilm.llm.checkpoint
    from fmrilm.tokenizer.model import BrainTokenizer

    def refuse(*args, **kwargs):
        raise AssertionError("weights loaded before the compatibility check")

    monkeypatch.setattr(fmrilm.llm.checkpoint, "load_brainlm", refuse)
    monkeypatch.setattr(BrainTokenizer, "from_pretrained", refuse)


def _refused(capsys, argv) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def fp(tokenizer_dir) -> str:
    return read_tokenizer_record(tokenizer_dir).fingerprint


def test_artifacts_of_one_run_are_compatible(art):
    check_compatible(art.tok, art.model, art.run / "corpus", art.run / "retrieval", splits=art.splits)
    check_compatible(art.tok, art.staged, art.run / "corpus")
    check_compatible(search_dir=art.run / "retrieval")
    record = read_tokenizer_record(art.tok)
    assert (record.vocab_size, record.tokens_per_scan) == (64, 100)


def test_ask_k64_tokenizer_with_k1024_model_is_refused(art, tmp_path, capsys, no_loading):
    run = _run_dir(tmp_path, "run", art.world, art.tok, art.model1024.parent)
    err = _refused(capsys, ["ask", "--run", str(run), *SCAN, "What is it?"])
    assert f"{run}/instruct/{art.model1024.name}/brainlm.json: field 'vocab.codebook_size'" in err
    assert "model reads and writes 1024 brain token ids" in err
    assert f"{run}/tokenizer (fingerprint {fp(art.tok)}) with 64" in err


def test_ask_k1024_tokenizer_with_k64_model_is_refused(art, tmp_path, capsys, no_loading):
    run = _run_dir(tmp_path, "run", art.world, art.k1024, art.model.parent)
    err = _refused(capsys, ["ask", "--run", str(run), *SCAN, "What is it?"])
    assert f"{run}/instruct/{art.model.name}/brainlm.json: field 'vocab.codebook_size'" in err
    assert "64 brain token ids" in err and f"{run}/tokenizer (fingerprint {fp(art.k1024)}) with 1024" in err


def test_ask_names_both_fingerprints(art, tmp_path, capsys, no_loading):
    run = _run_dir(tmp_path, "run", art.world, art.seed1, art.staged.parent)
    err = _refused(capsys, ["ask", "--run", str(run), *SCAN, "What is it?"])
    assert f"{run}/instruct/{art.staged.name}/stage.json: field 'tokenizer.fingerprint': model trained on tokens " \
           f"of tokenizer {art.tok} (fingerprint {fp(art.tok)}); the tokenizer given is {run}/tokenizer " \
           f"(fingerprint {fp(art.seed1)})" in err


def test_eval_with_a_tokenizer_of_another_seed_is_refused_before_compute(art, tmp_path, capsys, no_loading):
    out = tmp_path / "eval"
    err = _refused(capsys, ["eval", "--config", tiny_config("eval_tiny"), "--set", f"corpus={art.run / 'corpus'}",
                            f"tokenizer={art.seed1}", f"model={art.run / 'instruct'}", f"out={out}"])
    assert "corpus.json: field 'tokenizer.fingerprint'" in err
    assert f"(fingerprint {fp(art.tok)})" in err and f"{art.seed1} (fingerprint {fp(art.seed1)})" in err
    assert not out.exists()


def test_stimulate_with_a_model_of_another_tokenizer_is_refused(art, tmp_path, capsys, no_loading):
    out = tmp_path / "stimulation"
    err = _refused(capsys, ["stimulate", "--config", tiny_config("stimulation_tiny"), "--set",
                            f"corpus={art.run / 'corpus'}", f"tokenizer={art.tok}", f"model={art.model1024.parent}",
                            f"out={out}"])
    assert "brainlm.json: field 'vocab.codebook_size'" in err and str(art.tok) in err
    assert not out.exists()


def _search_run(art, tmp_path, **changes) -> Path:
    """A run whose retrieval/ is a copy of the tiny run's with search.json edited."""
    search = tmp_path / "run" / "retrieval"
    shutil.copytree(art.run / "retrieval", search)
    info = {**json.loads((search / "search.json").read_text()), **changes}
    (search / "search.json").write_text(json.dumps({k: v for k, v in info.items() if v is not None}))
    return search.parent


def test_search_scan_with_a_replaced_tokenizer_is_refused(art, tmp_path, capsys, no_loading):
    run = _search_run(art, tmp_path, tokenizer=str(art.seed1))
    err = _refused(capsys, ["search", "--run", str(run), *SCAN])
    assert "search.json: field 'tokenizer_fingerprint'" in err
    assert f"(fingerprint {fp(art.tok)})" in err and f"{art.seed1} (fingerprint {fp(art.seed1)})" in err


def test_search_scan_without_a_recorded_fingerprint_checks_the_feature_width(art, tmp_path, capsys, no_loading):
    run = _search_run(art, tmp_path, tokenizer=str(art.wide), tokenizer_fingerprint=None)
    err = _refused(capsys, ["search", "--run", str(run), *SCAN])
    assert "embedder/config.json: field 'in_dim'" in err and "reads 800 token features" in err
    assert f"{art.wide} (fingerprint {fp(art.wide)}), whose scans have 100 tokens × 16 = 1600" in err


def test_splits_and_retriever_records_must_agree(art, tmp_path):
    model = tmp_path / art.staged.name
    shutil.copytree(art.staged, model)
    stage = json.loads((model / "stage.json").read_text())
    other = {"path": "/elsewhere/splits.json", "sha256": "f" * 64}
    (model / "stage.json").write_text(json.dumps({**stage, "splits": other}))
    with pytest.raises(InputError, match=rf"stage\.json: field 'splits': the model .* was built on splits "
                                         rf"ffffffffffff \(/elsewhere/splits\.json\), but the tokenizer .* was "
                                         rf"built on .*{art.splits['sha256'][:12]}"):
        check_compatible(art.tok, model)
    with pytest.raises(InputError, match="this command was handed /elsewhere/splits.json"):
        check_compatible(art.tok, splits=other)
    (model / "stage.json").write_text(json.dumps(stage))
    (model / "retriever").mkdir()
    (model / "retriever" / "retriever.json").write_text(json.dumps({"k": 3, "tokens_per_scan": 200}))
    with pytest.raises(InputError, match=r"retriever\.json: field 'tokens_per_scan': the model's retriever reads "
                                         r"200 tokens per scan; .* with 100"):
        check_compatible(art.tok, model)
