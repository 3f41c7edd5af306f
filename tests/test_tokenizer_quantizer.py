"""The matmul + argmin fast path returns the library's codes; code embeddings have the vocabulary's rows."""

import pytest
import torch

from fmrilm.tokenizer.config import QuantizerConfig
from fmrilm.tokenizer.quantizer import Quantizer, nearest_code

CASES = [
    dict(kind="vq"),
    dict(kind="vq", use_cosine_sim=True),
    dict(kind="vq", codebook_dim=4),
    dict(kind="vq", codebook_dim=4, use_cosine_sim=True),
    dict(kind="rvq", levels=3),
    dict(kind="rvq", levels=2, shared_codebook=False, use_cosine_sim=True),
    dict(kind="fsq", fsq_levels=(4, 4, 4)),
]


def trained_quantizer(dim=16, K=64, seed=0, **kw) -> Quantizer:
    torch.manual_seed(seed)
    q = Quantizer(QuantizerConfig(codebook_size=K, **kw), dim)
    q.train()
    for _ in range(4):  # k-means init, EMA updates and dead-code replacement all run
        q(torch.randn(32, 9, dim) * 2 + 0.5)
    return q.eval()


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_fast_path_indices_equal_library(kw):
    q = trained_quantizer(**kw)
    z = torch.randn(50, 9, 16) * 2 + 0.5
    with torch.no_grad():
        reference = q(z).indices
    fast = q.nearest(z)
    assert fast.shape == reference.shape == (50, 9, q.levels)
    assert torch.equal(fast, reference)


def test_nearest_code_matches_bruteforce_across_chunks():
    torch.manual_seed(1)
    x, book = torch.randn(9000, 8), torch.randn(64, 8)  # more rows than one chunk
    brute = torch.cdist(x.double(), book.double()).argmin(1)
    assert torch.equal(nearest_code(x, book, cosine=False), brute)
    xn, bn = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(book, dim=1)
    assert torch.equal(nearest_code(xn, bn, cosine=True), (xn.double() @ bn.double().t()).argmax(1))


@pytest.mark.parametrize("kw,rows", [(dict(kind="vq"), 64), (dict(kind="rvq", levels=2), 64),
                                     (dict(kind="rvq", levels=2, shared_codebook=False), 128),
                                     (dict(kind="fsq", fsq_levels=(4, 4, 4)), 64)])
def test_code_embeddings_reproduce_quantized_vectors(kw, rows):
    q = trained_quantizer(**kw)
    table = q.code_embeddings()
    assert table.shape == (rows, 16)
    z = torch.randn(3, 9, 16)
    idx = q.nearest(z)
    # Token id of level l is l*K + code when each level has its own codebook.
    ids = idx + torch.arange(q.levels) * 64 if rows == 128 else idx
    # No projection here, so a scan's vector is the sum of its levels' embeddings.
    assert torch.allclose(table[ids].sum(-2), q.vectors(idx), atol=1e-5)


def test_uninitialised_codebook_is_refused():
    q = Quantizer(QuantizerConfig(codebook_size=64), 16).eval()
    with pytest.raises(RuntimeError, match="not initialised"):
        q.nearest(torch.randn(2, 3, 16))


def test_codebook_of_8192_codes_trains_and_encodes():
    q = trained_quantizer(dim=32, K=8192, kind="vq", codebook_dim=8)
    z = torch.randn(20, 9, 32)
    with torch.no_grad():
        assert torch.equal(q.nearest(z), q(z).indices)
    assert q.code_embeddings().shape == (8192, 32)
