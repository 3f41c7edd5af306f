"""BrainLM training with LoRA and QLoRA, save/load/merge, adapter identity, generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_llm_backbone import CODEBOOK, make_backbone, make_codes

from fmrilm.errors import InputError
from fmrilm.llm.checkpoint import load_brainlm, merge_to_hf, save_brainlm
from fmrilm.llm.config import OBJECTIVES, LLMConfig, LoraSettings, LossWeights, ScanConditionSettings
from fmrilm.llm.formatting import collate, encode_instruction, encode_joint
from fmrilm.llm.generate import Sampling, choose_answer, generate, generate_scan, number_tokens
from fmrilm.llm.model import BRAIN_PARTS_PREFIXES
from fmrilm.llm.peft_setup import build_brainlm

SCANS = np.random.default_rng(5).integers(0, CODEBOOK, size=(3, 12))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return make_backbone(tmp_path_factory.mktemp("llm") / "backbone")


def _model(backbone, quantize=False, weights=None):
    lora = LoraSettings(rank=4, alpha=8, dropout=0.0, quantize_4bit=quantize)
    cfg = LLMConfig(
        backbone=str(backbone),
        codebook_size=CODEBOOK,
        lora=lora,
        seed=0,
        loss_weights=weights or LossWeights(),
        scan_condition=ScanConditionSettings(tokens_per_scan=SCANS.shape[1]),
    )
    return build_brainlm(cfg, make_codes())


def _batch(model):
    tok, vocab = model.tokenizer, model.vocab
    samples = [
        encode_joint(tok, vocab, "text", text="a zebra standing near the grass."),
        encode_joint(tok, vocab, "brain", tokens=SCANS),
        encode_joint(tok, vocab, "brain_to_text", text="a dog running on the road.", tokens=SCANS[:1]),
        encode_joint(tok, vocab, "text_to_brain", text="a cat sitting.", tokens=SCANS[1:2]),
        encode_instruction(
            tok, vocab, {"prompt": "Is there a zebra? <scan>", "answer": "yes", "tokens": SCANS[2:]}
        ),
    ]
    return collate(samples, tok.eos_token_id, model.max_length)


def train_steps(model, batch, steps=4, lr=1e-2):
    """AdamW steps on one batch; the loss of each."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        hidden, _ = model.hidden_states(batch["input_ids"], batch["attention_mask"])
        return model.text_logits(hidden), model.brain_logits(hidden)


def test_lora_step_lowers_the_loss_and_trains_only_adapters_and_brain_parts(backbone):
    model = _model(backbone)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(BRAIN_PARTS_PREFIXES) for n in trainable)
    assert any(".q_proj.lora_A" in n for n in trainable) and any(".v_proj.lora_A" in n for n in trainable)
    frozen_before = model.base_lm.get_input_embeddings().weight.clone()
    batch = _batch(model)
    out = model(**batch)
    assert {f"loss_{name}" for name in OBJECTIVES} <= set(out)
    losses = train_steps(model, batch)
    assert losses[-1] < losses[0]
    assert torch.equal(model.base_lm.get_input_embeddings().weight, frozen_before)


def test_loss_is_the_weighted_mixture_of_objectives(backbone):
    weights = LossWeights(text=0.0, brain=2.0, brain_to_text=1.0, text_to_brain=1.0, instruction=0.5)
    model = _model(backbone, weights=weights)
    out = model(**_batch(model))
    w = dict(zip(OBJECTIVES, weights.as_list(), strict=True))
    expected = sum(w[n] * out[f"loss_{n}"] for n in OBJECTIVES) / sum(w.values())
    assert torch.allclose(out["loss"], expected)


def test_bad_ids_and_labels_are_refused(backbone):
    model = _model(backbone)
    batch = _batch(model)
    unknown_ids = batch["input_ids"].clone()
    unknown_ids[1, 2] = model.vocab.size
    with pytest.raises(InputError, match="outside the vocabulary"):
        model(**{**batch, "input_ids": unknown_ids})
    delimiter_labels = batch["labels"].clone()
    delimiter_labels[0, 1] = model.vocab.scan_start
    with pytest.raises(InputError, match="never predicted"):
        model(**{**batch, "labels": delimiter_labels})


def test_save_load_gives_identical_logits_and_merge_is_standalone(backbone, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _model(backbone)
    batch = _batch(model)
    train_steps(model, batch, steps=2)
    text, brain = _logits(model, batch)
    loaded = load_brainlm(save_brainlm(model, tmp_path / "saved"))
    text2, brain2 = _logits(loaded, batch)
    assert torch.equal(text, text2) and torch.equal(brain, brain2)

    merged_dir = merge_to_hf(model, tmp_path / "merged")
    hf = AutoModelForCausalLM.from_pretrained(merged_dir, local_files_only=True)
    with torch.no_grad():
        logits = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    vocab = model.vocab
    assert logits.shape[-1] == vocab.size
    # transformers alone has no scan conditioning: it agrees up to each sequence's first </scan> ...
    plain = (batch["input_ids"] == vocab.scan_end).cumsum(1) == 0
    assert not plain.all()
    assert torch.allclose(logits[..., : vocab.n_text][plain], text[plain], atol=1e-4)
    assert torch.allclose(logits[..., vocab.brain_offset : vocab.scan_start][plain], brain[plain], atol=1e-4)
    assert not torch.allclose(logits[..., : vocab.n_text][~plain], text[~plain], atol=1e-4)
    # ... and load_brainlm applies scan_condition.safetensors beside it, reproducing every position
    text3, brain3 = _logits(load_brainlm(merged_dir), batch)
    assert torch.allclose(text3, text, atol=1e-4) and torch.allclose(brain3, brain, atol=1e-4)


def test_adapter_for_another_base_is_refused_naming_both(backbone, tmp_path):
    saved = save_brainlm(_model(backbone), tmp_path / "saved")
    other = make_backbone(tmp_path / "other_base", seed=1)
    with pytest.raises(InputError, match=r"made for base 'backbone'.*but the backbone is 'other_base'"):
        load_brainlm(saved, backbone=other)


def test_qlora_step_lowers_the_loss_and_survives_evaluation(backbone, tmp_path):
    from bitsandbytes.nn import Linear4bit

    model = _model(backbone, quantize=True)
    assert any(isinstance(m, Linear4bit) for m in model.modules())
    batch = _batch(model)
    losses = train_steps(model, batch, steps=3)
    assert losses[-1] < losses[0]
    generate(model, [SCANS[:1]], ["Describe <scan>"], max_new_tokens=2)  # eval mode between steps
    losses += train_steps(model, batch, steps=2)
    assert losses[-1] < losses[2]
    text, brain = _logits(model, batch)
    text2, brain2 = _logits(load_brainlm(save_brainlm(model, tmp_path / "qlora")), batch)
    assert torch.equal(text, text2) and torch.equal(brain, brain2)


def test_generation_batched_equals_one_by_one(backbone):
    model = _model(backbone)
    train_steps(model, _batch(model), steps=2)
    prompts = ["Describe <scan>", "Is there a zebra? <scan> Answer briefly, please.", "Say something."]
    tokens = [SCANS[:1], SCANS[1:2], None]
    batched = generate(model, tokens, prompts, max_new_tokens=6)
    assert batched == [
        generate(model, t, p, max_new_tokens=6)[0] for t, p in zip(tokens, prompts, strict=True)
    ]
    sampling = Sampling(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=3)
    sampled = generate(model, tokens, prompts, max_new_tokens=6, sampling=sampling)
    assert sampled == generate(model, tokens, prompts, max_new_tokens=6, sampling=sampling)
    assert model.training  # generation restores the mode it found


def test_constrained_scores_from_one_prompt_pass_match_whole_sequences(backbone):
    """choose_answer runs a prompt once and continues each candidate from its cache; the scores must be
    those of each whole sequence run alone (unequal prompts, candidate counts and answer lengths, and
    candidates sharing a first token, whose score must still count it)."""
    model = _model(backbone).eval()
    prompts = ["Is there a zebra? <scan>", "How many animals are in this scan <scan> <scan>?", "Age? <scan>"]
    tokens = [SCANS[:1], SCANS[1:3], SCANS[2:]]
    candidates = [["yes", "no"], ["0", "1", "2", "3"], ["2", "20", "27 years"]]
    _, scores = choose_answer(model, tokens, prompts, candidates, batch_size=3)
    for p, t, cands, got in zip(prompts, tokens, candidates, scores):
        whole = []
        for c in cands:
            batch = collate([encode_instruction(model.tokenizer, model.vocab, {"prompt": p, "answer": c, "tokens": t},
                                                "test")], model.tokenizer.eos_token_id)
            with torch.no_grad():
                hidden, _ = model.hidden_states(batch["input_ids"], batch["attention_mask"])
                whole.append(-float(model.token_losses(hidden, batch["labels"])[0].sum()))
        np.testing.assert_allclose(got, whole, rtol=0, atol=1e-5)  # a position off by one: 5e-4
    with pytest.raises(InputError, match="context holds"):
        choose_answer(model, SCANS[:1], "zebra " * 1100 + "<scan>", ["yes", "no"])


def test_constrained_answers_and_next_scan(backbone):
    model = _model(backbone)
    answers, scores = choose_answer(
        model,
        [SCANS[:1], SCANS[1:2]],
        ["Is there a zebra? <scan>", "How many? <scan>"],
        [["yes", "no"], ["0", "1", "2", "3"]],
    )
    assert answers[0] in ("yes", "no") and answers[1] in ("0", "1", "2", "3")
    assert [len(s) for s in scores] == [2, 4] and answers[1] == ["0", "1", "2", "3"][
        int(np.argmax(scores[1]))
    ]
    nxt = generate_scan(model, [SCANS[:2], SCANS[:1]], tokens_per_scan=SCANS.shape[1])
    assert nxt.shape == (2, SCANS.shape[1]) and ((nxt >= 0) & (nxt < CODEBOOK)).all()
    # a rest patch among the rest codes of a vocabulary that also holds task codes
    low, high = CODEBOOK // 2, CODEBOOK // 2 + 3
    forward, grad_enabled = model.hidden_states, []

    def recording(*args, **kwargs):
        grad_enabled.append(torch.is_grad_enabled())
        return forward(*args, **kwargs)

    model.hidden_states = recording
    kept = generate_scan(model, [SCANS[:2]], tokens_per_scan=SCANS.shape[1], codes=(low, high))
    del model.hidden_states
    assert ((kept >= low) & (kept < high)).all()
    again, probabilities = generate_scan(model, [SCANS[:2]], tokens_per_scan=SCANS.shape[1], codes=(low, high),
                                         probabilities=True)
    assert probabilities.shape == (1, SCANS.shape[1], high - low)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(again, kept)
    np.testing.assert_array_equal(low + probabilities.argmax(-1), kept)  # greedy: the most likely code each step
    assert grad_enabled and not any(grad_enabled)  # no autograd graph: its KV steps would keep every activation
    with pytest.raises(InputError, match="codes"):
        generate_scan(model, [SCANS[:1]], tokens_per_scan=SCANS.shape[1], codes=(3, CODEBOOK + 1))


def test_numeric_answers_hold_only_digits(backbone):
    model = _model(backbone)
    digits = number_tokens(model.tokenizer)
    assert digits and all(model.tokenizer.decode([i]).strip().isdigit() for i in digits)
    prompts = ["How old is this participant? <scan>", "Describe <scan>"]
    free = generate(model, [SCANS[:1], SCANS[1:2]], prompts, max_new_tokens=4)
    answers = generate(model, [SCANS[:1], SCANS[1:2]], prompts, max_new_tokens=4, allowed_tokens=digits)
    assert all(a.isdigit() for a in answers), answers  # at least one digit, nothing else
    assert answers != free  # the untrained model's free answers are not numbers
    # as many digits as the training ages have: no stop before min_new_tokens
    two = generate(model, [SCANS[:1], SCANS[1:2]], prompts, max_new_tokens=2, allowed_tokens=digits, min_new_tokens=2)
    assert all(len(a.replace(" ", "")) == 2 and a.replace(" ", "").isdigit() for a in two), two
    with pytest.raises(InputError, match="allowed_tokens"):
        generate(model, [SCANS[:1]], prompts[:1], allowed_tokens=[len(model.tokenizer) + 5])


def test_prompt_longer_than_the_context_is_refused(backbone):
    model = _model(backbone)
    long_prompt = " ".join(["zebra"] * (model.max_length + 10))
    with pytest.raises(InputError, match="context"):
        generate(model, None, long_prompt)
