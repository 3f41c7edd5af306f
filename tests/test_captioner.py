"""The captioner: a BrainLM composed with its retriever, saved and loaded together, the LM unaware of it."""

from __future__ import annotations

import numpy as np
import pytest
from test_llm_backbone import CODEBOOK, NO_CONDITION, make_backbone, make_codes

from fmrilm.errors import InputError
from fmrilm.llm.checkpoint import load_brainlm
from fmrilm.llm.config import LLMConfig, LoraSettings
from fmrilm.llm.generate import generate
from fmrilm.llm.peft_setup import build_brainlm
from fmrilm.retrieval.brain_embedder import BrainEmbedderConfig, train_brain_embedder
from fmrilm.retrieval.caption_prompts import PREFIX, CaptionRetriever
from fmrilm.retrieval.captioner import Captioner
from fmrilm.retrieval.index import SemanticIndex

SLOTS = 4  # brain tokens per scan
SCANS = np.random.default_rng(3).integers(0, CODEBOOK, size=(3, SLOTS))
CAPTIONS = ["a red bus", "two dogs", "a cat on a bed", "a kite in the sky"]
PROMPT = "Describe <scan>"


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    backbone = make_backbone(tmp_path_factory.mktemp("captioner") / "backbone")
    model = build_brainlm(LLMConfig(backbone=str(backbone), codebook_size=CODEBOOK, seed=0, scan_condition=NO_CONDITION,
                                    lora=LoraSettings(rank=4, alpha=8, dropout=0.0)), make_codes())
    codes = make_codes().numpy()
    scans = np.random.default_rng(4).integers(0, CODEBOOK, size=(16, SLOTS))
    text = np.eye(len(CAPTIONS), 8, dtype=np.float32)
    embedder, _ = train_brain_embedder(codes[scans].reshape(len(scans), -1), text[np.arange(16) % len(CAPTIONS)],
                                       BrainEmbedderConfig(hidden=16, n_blocks=1, out_dim=8, epochs=2, batch_size=8),
                                       progress=False)
    index = SemanticIndex.build(text, [f"s{m}" for m in range(len(CAPTIONS))],
                                [{"caption": c, "stimulus_index": m} for m, c in enumerate(CAPTIONS)])
    return Captioner(model, CaptionRetriever(codes, embedder, index, k=2))


def test_prompts_retrieve_where_asked_and_only_for_one_scan(captioner):
    tokens, prompts = captioner.prompts([SCANS[:1], None, SCANS[1:2]], [PROMPT, "Caption it", PROMPT],
                                        retrieve=[True, True, False])
    assert prompts[0].startswith(PREFIX) and prompts[0].endswith(f"\n{PROMPT}")
    assert prompts[1:] == ["Caption it", PROMPT] and tokens[1] is None
    assert captioner.prompts(SCANS[:1], PROMPT, retrieve=False)[1] == [PROMPT]  # one prompt, as generate takes it
    assert Captioner(captioner.model).prompts([SCANS[:1]], [PROMPT])[1] == [PROMPT]  # no retriever: as they are
    with pytest.raises(InputError, match="2 flags for 1 prompts"):
        captioner.prompts([SCANS[:1]], [PROMPT], retrieve=[True, False])


def test_generation_without_retrieval_is_the_model_alone(captioner):
    scans = [SCANS[:1], SCANS[1:2]]
    assert not hasattr(captioner.model, "prompt_retriever")
    plain = captioner.generate(scans, [PROMPT] * 2, retrieve=False, max_new_tokens=3)
    assert plain == generate(captioner.model, scans, [PROMPT] * 2, max_new_tokens=3)
    _, augmented = captioner.prompts(scans, [PROMPT] * 2)
    assert captioner.generate(scans, [PROMPT] * 2, max_new_tokens=3) == generate(captioner.model, scans, augmented,
                                                                                 max_new_tokens=3)
    answers, scores = captioner.choose_answer(scans, [PROMPT] * 2, ["yes", "no"])
    assert all(a in ("yes", "no") for a in answers) and len(scores) == 2


def test_save_and_load_keep_the_retriever_beside_the_model(captioner, tmp_path):
    export = captioner.save(tmp_path / "export")
    assert (export / "retriever" / "retriever.json").is_file() and (export / "brainlm.json").is_file()
    loaded = Captioner.load(export)
    assert loaded.retriever.neighbours(SCANS) == captioner.retriever.neighbours(SCANS)
    assert loaded.generate([SCANS[:1]], [PROMPT], max_new_tokens=3) == \
        captioner.generate([SCANS[:1]], [PROMPT], max_new_tokens=3)
    # the model's own loader reads the model alone: the retriever is its own artifact
    assert not hasattr(load_brainlm(export), "prompt_retriever")
    merged = captioner.merge_to_hf(tmp_path / "merged")
    assert Captioner.load(merged).retriever.neighbours(SCANS) == captioner.retriever.neighbours(SCANS)
    # a model trained without retrieval: no retriever directory, none loaded
    bare = Captioner(captioner.model).save(tmp_path / "bare")
    assert not (bare / "retriever").exists() and Captioner.load(bare).retriever is None
