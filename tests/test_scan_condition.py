"""Scan conditioning: causal, zero at start, the same whole or in KV-cached pieces, strict about scans."""

import numpy as np
import pytest
import torch

from fmrilm.errors import InputError
from fmrilm.llm.scan_condition import ScanCondition
from fmrilm.llm.vocab import BrainVocab

VOCAB = BrainVocab(n_text=20, codebook_size=9)
S, D = 4, 6


def _module(zero: bool = False) -> ScanCondition:
    g = torch.Generator().manual_seed(0)
    module = ScanCondition(torch.randn(9, 5, generator=g), S, D, readout_dim=7, generator=g)
    if not zero:
        torch.nn.init.normal_(module.proj.weight, generator=g)
    return module


def _sequence(codes_a, codes_b) -> torch.Tensor:
    text = [1, 2, 3]
    ids = text + VOCAB.run_ids(np.array([codes_a])) + [4, 5] + VOCAB.run_ids(np.array([codes_b])) + [6]
    return torch.tensor([ids])


def test_condition_is_zero_before_a_scan_ends_and_follows_the_latest_scan():
    module = _module()
    ids = _sequence([0, 1, 2, 3], [8, 7, 6, 5])
    cond, carry = module(ids, VOCAB)
    ends = (ids[0] == VOCAB.scan_end).nonzero().flatten().tolist()
    assert cond[0, : ends[0]].abs().sum() == 0
    first = module.summarize(torch.tensor([[0, 1, 2, 3]]))[0]
    second = module.summarize(torch.tensor([[8, 7, 6, 5]]))[0]
    assert torch.allclose(cond[0, ends[0] : ends[1]], first.expand(ends[1] - ends[0], D))
    assert torch.allclose(cond[0, ends[1]:], second.expand(ids.shape[1] - ends[1], D))
    assert torch.equal(carry[0], cond[0, -1])
    # changing the second scan changes nothing before its </scan> (causal)
    other, _ = module(_sequence([0, 1, 2, 3], [1, 1, 1, 1]), VOCAB)
    assert torch.equal(other[0, : ends[1]], cond[0, : ends[1]]) and not torch.equal(other, cond)


def test_carry_makes_pieces_equal_to_the_whole():
    module = _module()
    ids = _sequence([0, 1, 2, 3], [8, 7, 6, 5])
    whole, _ = module(ids, VOCAB)
    pieces, carry = [], None
    # a prompt with the first scan, two ids one at a time, the second scan whole (a </scan> always arrives
    # with its brain tokens: delimiters are placed, never generated), then the last id
    for start, stop in ((0, 9), (9, 10), (10, 11), (11, 17), (17, 18)):
        piece, carry = module(ids[:, start:stop], VOCAB, carry)
        pieces.append(piece)
    assert torch.allclose(torch.cat(pieces, 1), whole)


def test_zero_initial_projection_adds_nothing():
    cond, _ = _module(zero=True)(_sequence([0, 1, 2, 3], [8, 7, 6, 5]), VOCAB)
    assert cond.abs().sum() == 0


@pytest.mark.parametrize("ids", [[1, VOCAB.scan_end], [VOCAB.scan_start, 21, 22, 3, 23, VOCAB.scan_end]])
def test_a_scan_without_its_brain_tokens_is_refused(ids):
    with pytest.raises(InputError, match="scan"):
        _module()(torch.tensor([ids]), VOCAB)


def test_readout_of_the_wrong_shape_is_refused():
    with pytest.raises(InputError, match="readout"):
        ScanCondition(torch.randn(9, 5), S, D, readout=torch.randn(S + 1, 5, 7))
