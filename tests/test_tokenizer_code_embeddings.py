"""The tokenizer artifact carries its code-embedding table, which stage 2 reads without the tokenizer package."""

import pytest
import torch
from safetensors.torch import load_file
from test_tokenizer_model import train_tokenizer

from fmrilm.stages.lm_common import CODE_EMBEDDINGS_FILE, load_tokenizer_exports
from fmrilm.tokenizer.model import CODE_EMBEDDINGS


@pytest.mark.parametrize("kind,extra", [("vq", {}), ("rvq", {"shared_codebook": False}), ("fsq", {})])
def test_saved_code_embeddings_equal_the_model_table(kind, extra, tmp_path):
    model, _, _, _ = train_tokenizer(kind, steps=3, **extra)
    out = model.save_pretrained(tmp_path / "tok")
    assert CODE_EMBEDDINGS == CODE_EMBEDDINGS_FILE  # the writer and the stage-2 reader agree on the name
    saved = load_file(str(out / CODE_EMBEDDINGS))
    assert set(saved) == {"code_embeddings"} | ({"text_readout"} if model.contrast is not None else set())
    expected = model.code_embeddings()
    assert saved["code_embeddings"].shape == (model.vocab_size, expected.shape[1])
    assert torch.equal(saved["code_embeddings"], expected)
    exports = load_tokenizer_exports(out)
    assert torch.equal(exports.code_embeddings, expected.float())
    assert exports.tokens_per_scan == model.tokens_per_scan


@pytest.mark.parametrize("kind,extra", [("vq", {}), ("rvq", {"shared_codebook": False})])
def test_text_readout_reproduces_the_scan_embedding(kind, extra, tmp_path):
    import torch.nn.functional as F

    model, _, _, _ = train_tokenizer(kind, steps=3, **extra)
    exports = load_tokenizer_exports(model.save_pretrained(tmp_path / "tok"))
    tokens = torch.randint(0, model.cfg.quantizer.codebook_size, (5, model.tokens_per_scan))
    tokens = model.to_tokens(model.to_indices(tokens))  # valid ids on every level
    pooled = torch.einsum("nsc,sct->nt", exports.code_embeddings[tokens], exports.text_readout)
    assert torch.allclose(F.normalize(pooled, dim=-1), model.scan_embedding(tokens), atol=1e-5)


def test_resave_replaces_the_table(tmp_path):
    first, _, _, _ = train_tokenizer("vq", steps=3, seed=0)
    second, _, _, _ = train_tokenizer("vq", steps=3, seed=1)
    first.save_pretrained(tmp_path / "tok")
    second.save_pretrained(tmp_path / "tok")
    assert torch.equal(load_tokenizer_exports(tmp_path / "tok").code_embeddings, second.code_embeddings())
    assert not torch.equal(second.code_embeddings(), first.code_embeddings())
    assert not [p.name for p in (tmp_path / "tok").iterdir() if p.name.startswith(".")]  # no temp files left
