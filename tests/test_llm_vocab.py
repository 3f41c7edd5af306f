"""Brain vocabulary and training-sequence formatting: round trips, masking check, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_llm_backbone import CODEBOOK, TEXTS, make_codes

from fmrilm.errors import InputError
from fmrilm.llm.backbone import train_text_tokenizer
from fmrilm.llm.config import OBJECTIVES
from fmrilm.llm.formatting import check_answer_mask, collate, encode_instruction, encode_joint, encode_prompt
from fmrilm.llm.model import IGNORE
from fmrilm.llm.vocab import BrainEmbedding, extend_tokenizer


@pytest.fixture(scope="module")
def tok_vocab():
    tokenizer = train_text_tokenizer(TEXTS, 420)
    return tokenizer, extend_tokenizer(tokenizer, CODEBOOK)


@pytest.fixture
def scans():
    # Three scans of unequal content, P·L = 10.
    return np.random.default_rng(3).integers(0, CODEBOOK, size=(3, 10))


def test_vocabulary_extension_round_trip(tok_vocab, scans):
    tokenizer, vocab = tok_vocab
    assert vocab.size == len(tokenizer) == vocab.n_text + CODEBOOK + 3
    ids = vocab.run_ids(scans)
    text = tokenizer.decode(ids)
    assert text.startswith("<scan><brain_") and text.count("<t>") == 2
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids  # each brain token is one id
    brain = [i for i in ids if vocab.brain_offset <= i < vocab.scan_start]
    np.testing.assert_array_equal(vocab.ids_to_codes(brain).reshape(scans.shape), scans)
    # Extending an already extended tokenizer (a merged model's) keeps the same layout.
    assert extend_tokenizer(tokenizer, CODEBOOK) == vocab
    with pytest.raises(InputError, match="brain vocabulary"):
        extend_tokenizer(tokenizer, CODEBOOK + 1)


def test_out_of_codebook_ids_are_refused(tok_vocab, scans):
    _, vocab = tok_vocab
    for bad in (scans + CODEBOOK, -scans - 1, scans.astype(float)):
        with pytest.raises(InputError):
            vocab.run_ids(bad)
    with pytest.raises(InputError, match="not brain tokens"):
        vocab.ids_to_codes([0, vocab.brain_offset])


def test_brain_embedding_projects_codes_at_text_scale():
    codes = make_codes()
    embed = BrainEmbedding(codes, d_model=48, scale=0.02, generator=torch.Generator().manual_seed(0))
    table = embed.table()
    assert table.shape == (CODEBOOK + 3, 48)
    assert torch.allclose(table[:CODEBOOK].std(), torch.tensor(0.02), rtol=1e-3)
    table.sum().backward()
    assert embed.proj.weight.grad is not None and embed.delimiters.grad is not None
    assert not embed.codes.requires_grad  # the stage-1 codebook stays as it was
    rebuilt = BrainEmbedding.from_table(table.detach(), CODEBOOK)
    assert torch.allclose(rebuilt.table(), table.detach())


def test_instruction_loss_is_on_the_answer_only(tok_vocab, scans):
    tokenizer, vocab = tok_vocab
    sample = {
        "prompt": "Compare <scan> with <scan>. What changed?",
        "answer": "a zebra appeared",
        "tokens": scans[:2],
    }
    enc = encode_instruction(tokenizer, vocab, sample)
    prompt = encode_prompt(tokenizer, vocab, sample["prompt"], scans[:2])
    assert enc["input_ids"][: len(prompt)] == prompt
    supervised = [label for label in enc["labels"] if label != IGNORE]
    assert tokenizer.decode(supervised, skip_special_tokens=True) == "a zebra appeared"
    assert supervised[-1] == tokenizer.eos_token_id
    assert enc["objective"] == OBJECTIVES.index("instruction")
    # An answer that is itself a scan: brain tokens supervised, its delimiters not.
    enc = encode_instruction(
        tokenizer, vocab, {"prompt": "Next scan after <scan>?", "answer": "<scan>", "tokens": scans[:2]}
    )
    supervised = [label for label in enc["labels"] if label != IGNORE]
    assert supervised[:-1] == vocab.codes_to_ids(scans[1]).tolist()


def test_masking_check_fires_on_a_misaligned_sample(tok_vocab, scans):
    tokenizer, vocab = tok_vocab
    enc = encode_instruction(
        tokenizer, vocab, {"prompt": "Describe <scan>", "answer": "a dog on the road", "tokens": scans[:1]}
    )
    n_prompt = enc["labels"].index(next(label for label in enc["labels"] if label != IGNORE))
    answer = enc["input_ids"][n_prompt:]
    check_answer_mask(enc["input_ids"], enc["labels"], n_prompt, answer, vocab)  # aligned: silent
    shifted = [IGNORE] + enc["labels"][:-1]  # labels one position late (the classic off-by-one)
    with pytest.raises(InputError, match="misaligned"):
        check_answer_mask(enc["input_ids"], shifted, n_prompt, answer, vocab)
    leaky = list(enc["labels"])
    leaky[n_prompt - 1] = enc["input_ids"][n_prompt - 1]
    with pytest.raises(InputError, match="prompt positions carry a loss"):
        check_answer_mask(enc["input_ids"], leaky, n_prompt, answer, vocab)
    with pytest.raises(InputError, match="labels for"):
        check_answer_mask(enc["input_ids"], enc["labels"][:-1], n_prompt, answer, vocab)


def test_placeholders_must_match_scans(tok_vocab, scans):
    tokenizer, vocab = tok_vocab
    with pytest.raises(InputError, match="placeholders for 3 scans"):
        encode_instruction(tokenizer, vocab, {"prompt": "Describe <scan>", "answer": "x", "tokens": scans})
    with pytest.raises(InputError, match="answer"):
        encode_instruction(tokenizer, vocab, {"prompt": "Describe"})


def test_joint_objectives_supervise_the_right_tokens(tok_vocab, scans):
    tokenizer, vocab = tok_vocab
    brain = encode_joint(tokenizer, vocab, "brain", tokens=scans)
    supervised = [label for label in brain["labels"] if label != IGNORE]
    assert (
        supervised == vocab.codes_to_ids(scans[1:]).ravel().tolist()
    )  # scans after the first, no delimiters
    to_text = encode_joint(tokenizer, vocab, "brain_to_text", text="a cat", tokens=scans[:1])
    assert all(label == IGNORE for label in to_text["labels"][: len(vocab.run_ids(scans[:1]))])
    to_brain = encode_joint(tokenizer, vocab, "text_to_brain", text="a cat", tokens=scans[:1])
    assert [label for label in to_brain["labels"] if label != IGNORE] == vocab.codes_to_ids(scans[0]).tolist()
    with pytest.raises(InputError, match="2 scans"):
        encode_joint(tokenizer, vocab, "brain", tokens=scans[:1])
    with pytest.raises(InputError, match="objective"):
        encode_joint(tokenizer, vocab, "pictures", text="a cat")


def test_collate_pads_and_refuses_overlong(tok_vocab, scans):
    tokenizer, vocab = tok_vocab
    samples = [
        encode_joint(tokenizer, vocab, "text", text="a cat"),
        encode_joint(tokenizer, vocab, "brain", tokens=scans),
    ]
    batch = collate(samples, tokenizer.eos_token_id)
    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["labels"][0, lengths[0] :] == IGNORE).all()
    assert batch["objective"].tolist() == [OBJECTIVES.index("text"), OBJECTIVES.index("brain")]
    with pytest.raises(InputError, match="exceeds the context"):
        collate(samples, tokenizer.eos_token_id, max_length=max(lengths) - 1)
