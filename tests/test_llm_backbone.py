"""Backbone: bootstrapped compact Llama + SentencePiece tokenizer, offline loading, clear errors.

Also holds the tiny fixtures the other ``test_llm_*`` files import.
"""

from __future__ import annotations

import os

import pytest
import torch

from fmrilm.errors import InputError
from fmrilm.llm.backbone import bootstrap_backbone, train_text_tokenizer
from fmrilm.llm.config import BootstrapConfig, LLMConfig, ScanConditionSettings
from fmrilm.llm.peft_setup import build_brainlm

# Text-only corpus stand-in; "zebra" and "surfer" play the novel categories.
TEXTS = [
    f"a photo of a {animal} {verb} near the {place}."
    for animal in ("zebra", "surfer", "dog", "cat", "horse")
    for verb in ("standing", "running", "sitting", "looking")
    for place in ("grass", "beach", "road", "sky")
]
TEXTS += ["Question: is there a zebra? Answer: yes", "How many dogs are there? 2", "two surfers ride a wave"]
# hidden 64 = one bitsandbytes 4-bit block, the smallest width QLoRA quantizes cleanly.
TINY = BootstrapConfig(
    vocab_size=420,
    hidden_size=64,
    num_layers=2,
    num_heads=2,
    intermediate_size=128,
    max_position_embeddings=192,
    seed=0,
)
CODEBOOK = 64
NO_CONDITION = ScanConditionSettings(enabled=False)


def make_backbone(path, seed: int = 0):
    cfg = BootstrapConfig(**{**TINY.__dict__, "seed": seed})
    return bootstrap_backbone(TEXTS, path, cfg)


def make_codes(k: int = CODEBOOK, d_code: int = 16) -> torch.Tensor:
    return torch.randn(k, d_code, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return make_backbone(tmp_path_factory.mktemp("llm") / "backbone")


def test_bootstrap_is_an_ordinary_hf_directory(backbone):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(backbone, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(backbone, local_files_only=True)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.hidden_size == TINY.hidden_size and model.config.num_hidden_layers == TINY.num_layers
    assert model.config.vocab_size == len(tokenizer) <= TINY.vocab_size
    text = "a zebra and 3 surfers: naïve café 🦓"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # byte fallback covers unseen characters
    # The novel category is in the learned vocabulary, not spelled out letter by letter.
    assert len(tokenizer(" zebra", add_special_tokens=False)["input_ids"]) <= 2
    assert (backbone / "bootstrap.yaml").is_file()


def test_bootstrap_follows_its_seed(tmp_path, backbone):
    from safetensors.torch import load_file

    again = make_backbone(tmp_path / "again")
    other = make_backbone(tmp_path / "other", seed=1)
    base = load_file(backbone / "model.safetensors")
    assert all(torch.equal(base[k], v) for k, v in load_file(again / "model.safetensors").items())
    assert not torch.equal(
        base["model.embed_tokens.weight"], load_file(other / "model.safetensors")["model.embed_tokens.weight"]
    )
    assert (again / "tokenizer.json").read_text() == (backbone / "tokenizer.json").read_text()


def test_bootstrap_refuses_bad_input(tmp_path, backbone):
    with pytest.raises(InputError, match="no non-empty text"):
        train_text_tokenizer(["", "  "], 500)
    with pytest.raises(InputError, match="vocab_size"):
        train_text_tokenizer(TEXTS, 100)
    with pytest.raises(InputError, match="already exists"):
        make_backbone(backbone)


@pytest.mark.parametrize("path", [None, "does/not/exist"])
def test_missing_backbone_says_how_to_provide_one(path):
    with pytest.raises(InputError, match="--backbone PATH.*stage 0"):
        build_brainlm(LLMConfig(backbone=path, codebook_size=CODEBOOK, scan_condition=NO_CONDITION), make_codes())


def test_loading_sets_offline_flags(backbone):
    build_brainlm(LLMConfig(backbone=str(backbone), codebook_size=CODEBOOK, scan_condition=NO_CONDITION), make_codes())
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
