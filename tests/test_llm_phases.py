"""CorText's two phases on a pretrained-style backbone with a real tokenizers tokenizer and chat template.

The backbone is a tiny Llama converted from a GGUF file the test writes (as stage 0 converts SmolLM2):
phase 1 freezes it (only brain parts and, with ``train_norms``, the norms learn), phase 2 adds LoRA or
QLoRA on top; adapters load with plain peft and merged models with plain transformers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_writers import write_tiny_gguf
from peft import PeftModel
from test_llm_backbone import make_codes
from test_llm_training import train_steps
from transformers import AutoModelForCausalLM

from fmrilm.errors import InputError
from fmrilm.llm.checkpoint import load_brainlm, merge_to_hf, save_brainlm
from fmrilm.llm.config import LLMConfig, LoraSettings, ScanConditionSettings
from fmrilm.llm.formatting import chat_frame, collate, encode_instruction, encode_joint, encode_prompt
from fmrilm.llm.generate import choose_answer
from fmrilm.llm.gguf_import import convert_gguf
from fmrilm.llm.peft_setup import build_brainlm, is_norm

CODEBOOK = 64
SCANS = np.random.default_rng(3).integers(0, CODEBOOK, size=(2, 10))
LORA = LoraSettings(rank=4, alpha=8, dropout=0.0)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    root = tmp_path_factory.mktemp("phases")
    return convert_gguf(write_tiny_gguf(root / "tiny.gguf"), root / "hf", dtype=torch.float32)


def _cfg(backbone, **kw) -> LLMConfig:
    return LLMConfig(backbone=str(backbone), codebook_size=CODEBOOK, seed=0, max_length=512,
                     scan_condition=ScanConditionSettings(tokens_per_scan=SCANS.shape[1]), **kw)


def _phase_one(backbone, train_norms=True):
    return build_brainlm(_cfg(backbone, lora=LoraSettings(enabled=False), freeze_backbone=True,
                              train_norms=train_norms), make_codes())


def _batch(model):
    tok, vocab = model.tokenizer, model.vocab
    return collate([
        encode_joint(tok, vocab, "brain_to_text", text="a dog on the grass", tokens=SCANS[:1]),
        encode_joint(tok, vocab, "text_to_brain", text="the cat", tokens=SCANS[1:]),
        encode_instruction(tok, vocab, {"prompt": "Describe it. <scan>", "answer": "a zebra", "tokens": SCANS[:1]}),
    ], tok.eos_token_id, model.max_length)


def _backbone_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.base_lm.state_dict().items()}


def test_prompts_use_the_backbones_own_chat_template(backbone):
    model = _phase_one(backbone)
    before, after = chat_frame(model.tokenizer)
    ids = encode_prompt(model.tokenizer, model.vocab, "What is it? <scan>", SCANS[:1])
    assert model.tokenizer.decode(before) == "<|im_start|>user\n"
    assert model.tokenizer.decode(after) == "<|im_end|>\n<|im_start|>assistant\n"
    assert ids[: len(before)] == before and ids[-len(after):] == after
    assert ids.count(model.vocab.scan_start) == 1
    sample = encode_instruction(model.tokenizer, model.vocab, {"prompt": "Q <scan>", "answer": "yes",
                                                               "tokens": SCANS[:1]})
    assert sample["input_ids"][-1] == model.tokenizer.eos_token_id  # the template's end of turn


@pytest.mark.parametrize("train_norms", [False, True])
def test_phase_one_trains_brain_parts_and_only_the_norms_of_the_backbone(backbone, train_norms):
    model = _phase_one(backbone, train_norms)
    before = _backbone_weights(model)
    losses = train_steps(model, _batch(model), steps=5, lr=2e-2)
    assert losses[-1] < losses[0]
    norms = {f"{name}.{p}" for name, m in model.base_lm.named_modules() if is_norm(m) for p, _ in
             m.named_parameters(recurse=False)}
    assert norms
    for name, value in model.base_lm.state_dict().items():
        changed = not torch.equal(value, before[name])
        assert changed == (train_norms and name in norms), name


def test_phase_two_adds_lora_to_a_phase_one_model_and_plain_peft_loads_the_adapter(backbone, tmp_path):
    phase1 = _phase_one(backbone)
    train_steps(phase1, _batch(phase1), steps=3, lr=2e-2)
    save_brainlm(phase1, tmp_path / "phase1")
    assert (tmp_path / "phase1" / "backbone_parts.safetensors").is_file()
    assert not (tmp_path / "phase1" / "backbone").exists()  # a frozen base is referenced, not copied
    torch.testing.assert_close(load_brainlm(tmp_path / "phase1")(**_batch(phase1))["loss"],
                               phase1(**_batch(phase1))["loss"])

    model = load_brainlm(tmp_path / "phase1", add_lora=LORA)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any("modules_to_save" in n for n in trainable)
    assert not any(n.endswith(("q_proj.base_layer.weight", "embed_tokens.weight")) for n in trainable)
    losses = train_steps(model, _batch(model), steps=5, lr=2e-2)
    assert losses[-1] < losses[0]
    save_brainlm(model, tmp_path / "phase2")
    reloaded = load_brainlm(tmp_path / "phase2")
    batch = _batch(model)
    torch.testing.assert_close(reloaded(**batch)["loss"], model(**batch)["loss"])

    # the adapter alone, through plain peft on plain transformers: the same text logits
    text = model.tokenizer("the cat on the mat", return_tensors="pt")["input_ids"]
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(backbone), tmp_path / "phase2" / "adapter")
    with torch.no_grad():
        ours = model.text_logits(model.hidden_states(text)[0])
        torch.testing.assert_close(plain(text).logits, ours)

    # merged: plain AutoModelForCausalLM over the extended vocabulary, same text logits
    merge_to_hf(model, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", local_files_only=True)
    assert merged.get_input_embeddings().weight.shape[0] == model.vocab.size
    with torch.no_grad():
        torch.testing.assert_close(merged(text).logits[..., : model.vocab.n_text], ours, atol=1e-4, rtol=1e-4)

    with pytest.raises(InputError, match="new adapters go only on a frozen-backbone"):
        load_brainlm(tmp_path / "phase2", add_lora=LORA)


def test_qlora_phase_two_lowers_the_loss_on_a_4bit_base(backbone, tmp_path):
    phase1 = _phase_one(backbone, train_norms=False)
    save_brainlm(phase1, tmp_path / "phase1")
    model = load_brainlm(tmp_path / "phase1", add_lora=LoraSettings(rank=4, alpha=8, dropout=0.0,
                                                                     quantize_4bit=True))
    assert getattr(model.base_lm, "is_loaded_in_4bit", False)
    losses = train_steps(model, _batch(model), steps=5, lr=2e-2)
    assert losses[-1] < losses[0]


def test_constrained_answers_are_always_allowed_pieces_of_the_real_tokenizer(backbone):
    model = _phase_one(backbone)
    choices = [["yes", "no"], ["female", "male"], ["0", "1", "2", "3"]]
    with torch.no_grad():
        answers, _ = choose_answer(model, [SCANS[:1]] * 3, ["Is there a face? <scan>", "Sex? <scan>",
                                                            "How many? <scan>"], choices)
    assert all(a in c for a, c in zip(answers, choices))


def test_norm_training_needs_a_frozen_or_lora_backbone(backbone):
    with pytest.raises(InputError, match="train_norms"):
        build_brainlm(_cfg(backbone, lora=LoraSettings(enabled=False), train_norms=True), make_codes())


def test_forgetting_compares_the_adapted_model_with_its_pretrained_base(backbone):
    from fmrilm.evaluation.forgetting import forgetting_section, general_text

    model = build_brainlm(_cfg(backbone, lora=LORA), make_codes())  # LoRA's B starts at zero: nothing changed yet
    fresh = forgetting_section(model, max_new_tokens=4)
    assert fresh["perplexity_ratio"] == pytest.approx(1.0, rel=1e-5)
    assert fresh["base"]["answers"] == fresh["adapted"]["answers"]
    assert len(fresh["questions"]) == len(general_text()["prompts"]) and fresh["base"]["tokens"] > 100
    train_steps(model, _batch(model), steps=8, lr=5e-2)
    trained = forgetting_section(model, max_new_tokens=4)
    assert trained["base"]["perplexity"] == pytest.approx(fresh["base"]["perplexity"])
    assert trained["perplexity_ratio"] != pytest.approx(1.0, rel=1e-4)


def test_parcel_position_embeddings_tell_slots_apart_and_survive_cached_decoding(backbone, tmp_path):
    from fmrilm.llm.generate import generate_scan

    cfg = _cfg(backbone, lora=LORA, parcel_embeddings=True)
    model = build_brainlm(cfg, make_codes())
    assert model.brain_embed.slots.shape == (SCANS.shape[1], model.base_lm.config.hidden_size)
    with torch.no_grad():
        model.brain_embed.slots.normal_(generator=torch.Generator().manual_seed(0))
    same_code = torch.tensor([[model.vocab.scan_start] + [model.vocab.brain_offset + 5] * SCANS.shape[1]
                              + [model.vocab.scan_end]])
    embeds, carry = model.embed(same_code)
    assert not torch.allclose(embeds[0, 1], embeds[0, 2])  # one code, two parcels
    assert int(carry.slot[0]) == SCANS.shape[1]
    # decoding a scan token by token (KV cache, slot count carried) = the batched full-sequence answer
    runs = [SCANS[:1], SCANS[1:2]]
    together = generate_scan(model, runs, SCANS.shape[1])
    alone = np.concatenate([generate_scan(model, [r], SCANS.shape[1]) for r in runs])
    np.testing.assert_array_equal(together, alone)
    save_brainlm(model, tmp_path / "saved")
    batch = _batch(model)
    torch.testing.assert_close(load_brainlm(tmp_path / "saved")(**batch)["loss"], model(**batch)["loss"])
    merge_to_hf(model, tmp_path / "merged")
    torch.testing.assert_close(load_brainlm(tmp_path / "merged")(**batch)["loss"], model(**batch)["loss"],
                               atol=1e-4, rtol=1e-4)
    long_scan = torch.tensor([[model.vocab.scan_start] + [model.vocab.brain_offset] * (SCANS.shape[1] + 1)])
    with pytest.raises(InputError, match="parcel-position"):
        model.embed(long_scan)
