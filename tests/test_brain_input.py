"""Continuous brain input (fMRI-LM's released code): the tokenizer encoder's outputs in place of the codes.

Codes and continuous input share one projection, so latents equal to the code vectors must reproduce
the codes path exactly (training loss, generation, constrained answers); anything else must change
what the LM reads; a count that does not match the brain tokens is refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_llm_backbone import make_codes
from test_llm_phases import LORA, SCANS, _batch, _cfg, backbone  # noqa: F401  (module fixture)
from test_tokenizer_rest_tokens import initialised_tokenizer

from fmrilm.brain.store import Dataset
from fmrilm.errors import InputError
from fmrilm.llm.brain_input import pad_latents
from fmrilm.llm.generate import choose_answer, generate
from fmrilm.llm.peft_setup import build_brainlm
from fmrilm.tokenizer.tokens import write_tokens_dataset


@pytest.fixture(scope="module")
def model(backbone):  # noqa: F811
    return build_brainlm(_cfg(backbone, lora=LORA, brain_input="continuous"), make_codes())


def _code_vectors(model, scans) -> np.ndarray:
    """[n_scans, P, d]: the latents that say exactly what the codes say."""
    return model.brain_embed.codes[torch.as_tensor(scans)].numpy()


def test_latents_equal_to_the_code_vectors_reproduce_the_codes_path(model):
    batch = _batch(model)  # rows read SCANS[0], SCANS[1], SCANS[0]
    d = model.brain_embed.codes.shape[1]
    same = pad_latents([_code_vectors(model, SCANS[i:i + 1])[0] for i in (0, 1, 0)], d)
    torch.testing.assert_close(model(**batch, **same)["loss"], model(**batch)["loss"])
    other = pad_latents([_code_vectors(model, SCANS[i:i + 1])[0] + 1.0 for i in (0, 1, 0)], d)
    assert not torch.allclose(model(**batch, **other)["loss"], model(**batch)["loss"])
    # a row whose count is 0 reads its codes: only the first row's embeddings change
    first_only = pad_latents([_code_vectors(model, SCANS[:1])[0] + 1.0, None, None], d)
    plain, _ = model.embed(batch["input_ids"])
    mixed, _ = model.embed(batch["input_ids"], None, first_only["brain_latents"], first_only["brain_latent_count"])
    assert not torch.allclose(mixed[0], plain[0]) and torch.equal(mixed[1:], plain[1:])


def test_generation_and_constrained_answers_read_the_latents(model):
    prompts = ["Describe it. <scan>", "What is this? <scan>"]
    tokens = [SCANS[:1], SCANS[1:2]]
    exact = [_code_vectors(model, t) for t in tokens]
    codes_text = generate(model, tokens, prompts, max_new_tokens=6)
    assert generate(model, tokens, prompts, max_new_tokens=6, brain_latents=exact) == codes_text
    assert generate(model, tokens, prompts, max_new_tokens=6, brain_latents=[x * 0 + 50.0 for x in exact]) != codes_text
    _, with_codes = choose_answer(model, tokens, prompts, ["yes", "no"])
    _, with_latents = choose_answer(model, tokens, prompts, ["yes", "no"], brain_latents=exact)
    _, shifted = choose_answer(model, tokens, prompts, ["yes", "no"], brain_latents=[x + 2.0 for x in exact])
    np.testing.assert_allclose(np.stack(with_latents), np.stack(with_codes), rtol=1e-4, atol=1e-4)
    assert not np.allclose(np.stack(shifted), np.stack(with_codes), atol=1e-4)


def test_latents_that_do_not_match_the_brain_tokens_are_refused(model):
    batch = _batch(model)
    d = model.brain_embed.codes.shape[1]
    short = pad_latents([_code_vectors(model, SCANS[:1])[0][:5], None, None], d)
    with pytest.raises(InputError, match="5 encoder outputs for 10 brain tokens"):
        model(**batch, **short)
    with pytest.raises(InputError, match="brain_latents"):
        generate(model, [SCANS[:1]], ["<scan>"], brain_latents=[np.zeros((1, 10, d + 1), np.float32)])
    with pytest.raises(InputError, match="brain_input"):
        build_brainlm(_cfg(model.llm_config.backbone, brain_input="pixels"), make_codes())


def test_tokens_dataset_stores_the_encoder_outputs_beside_the_unchanged_codes(tmp_path, atlas, tiny_task_world):
    from fmrilm.tokenizer.data import all_scans

    tokenizer = initialised_tokenizer(atlas)
    plain = Dataset(write_tokens_dataset(tokenizer, tiny_task_world, tmp_path / "codes"), "tokens")
    both = Dataset(write_tokens_dataset(tokenizer, tiny_task_world, tmp_path / "both", batch_size=7, latents=True),
                   "tokens")
    assert "latents" not in plain.manifest["arrays"]
    np.testing.assert_array_equal(both.array("tokens"), plain.array("tokens"))
    latents = both.array("latents")
    n = len(plain.array("tokens"))
    assert latents.shape == (n, tokenizer.n_parcels, tokenizer.cfg.code_dim) and latents.dtype == np.float16
    ids, expected = tokenizer.encode_with_latents(all_scans(tiny_task_world, tokenizer).batch(np.arange(5))["x"])
    np.testing.assert_allclose(latents[:5], expected.numpy(), rtol=1e-2, atol=1e-2)
    np.testing.assert_array_equal(ids.numpy(), plain.array("tokens")[:5])
