"""N-way retrieval (MindEye protocol) and the shuffled-brain derangement."""

import numpy as np
import pytest

from fmrilm.errors import InputError
from fmrilm.evaluation.controls import derangement, shuffled_control
from fmrilm.evaluation.retrieval_metrics import n_way_retrieval, topk_hits


@pytest.fixture(scope="module")
def captions():
    return np.random.default_rng(0).standard_normal((900, 64)).astype(np.float32)


def test_topk_hits_by_hand():
    sim = np.array([[0.9, 0.1, 0.5],    # correct is best            → rank 0
                    [0.8, 0.2, 0.3],    # two candidates beat it      → rank 2
                    [0.4, 0.7, 0.4]])   # one beats it, one ties      → rank 2 (ties count against)
    hits = topk_hits(sim, ks=(1, 2, 3))
    assert hits[1].tolist() == [True, False, False]
    assert hits[2].tolist() == [True, False, False]
    assert hits[3].tolist() == [True, True, True]


def test_planted_perfect_predictions_score_one(captions):
    brain = captions * 3.0  # scale does not matter: cosine similarity
    out = n_way_retrieval(brain, captions, n_way=300, n_draws=30, seed=1)
    for direction in ("brain_to_caption", "caption_to_brain"):
        assert out[direction]["top1"] == 1.0 and out[direction]["top5"] == 1.0
    assert out["chance"] == {"top1": 1 / 300, "top5": 5 / 300} and out["n_draws"] == 30


def test_shuffled_and_random_predictions_score_chance(captions):
    # 30 draws × 300 queries: the standard error of top-1 around 1/300 is about 0.0006.
    shuffled = captions[derangement(len(captions), seed=2)]
    random = np.random.default_rng(5).standard_normal(captions.shape)
    for brain in (shuffled, random):
        out = n_way_retrieval(brain, captions, n_way=300, n_draws=30, seed=3)
        for direction in ("brain_to_caption", "caption_to_brain"):
            assert out[direction]["top1"] == pytest.approx(1 / 300, abs=0.003)
            assert out[direction]["top5"] == pytest.approx(5 / 300, abs=0.007)


def test_constant_predictions_never_win_ties(captions):
    # Identical brain rows tie for every caption query; a tie must not count as a hit.
    out = n_way_retrieval(np.ones_like(captions), captions, n_way=50, n_draws=3)
    assert out["caption_to_brain"]["top1"] == 0.0 and out["caption_to_brain"]["top5"] == 0.0


def test_draws_are_seeded(captions):
    brain = captions + np.random.default_rng(1).standard_normal(captions.shape) * 2.0
    a = n_way_retrieval(brain, captions, n_way=100, n_draws=5, seed=7)
    b = n_way_retrieval(brain, captions, n_way=100, n_draws=5, seed=7)
    c = n_way_retrieval(brain, captions, n_way=100, n_draws=5, seed=8)
    assert a == b and a != c
    assert 0.0 < a["brain_to_caption"]["top1"] < 1.0


def test_bad_shapes_are_refused(captions):
    with pytest.raises(InputError, match="cannot make 300-way"):
        n_way_retrieval(captions[:100], captions[:100])
    with pytest.raises(InputError, match="does not pair"):
        n_way_retrieval(captions[:100], captions[:99], n_way=50)
    with pytest.raises(InputError, match="ks"):
        n_way_retrieval(captions[:100], captions[:100], n_way=3, ks=(1, 5))


def test_derangement_has_no_fixed_points_and_is_seeded():
    for n in (2, 3, 10, 1001):
        perm = derangement(n, seed=4)
        assert sorted(perm.tolist()) == list(range(n))
        assert not np.any(perm == np.arange(n))
    np.testing.assert_array_equal(derangement(50, seed=1), derangement(50, seed=1))
    assert not np.array_equal(derangement(50, seed=1), derangement(50, seed=2))
    assert shuffled_control(["a", "b"], seed=0) == ["b", "a"]


def test_derangement_respects_groups():
    # Trials of one stimulus must not receive each other's brain data.
    groups = np.repeat([0, 1, 2, 3, 4], [3, 3, 2, 1, 5])
    for seed in range(20):
        perm = derangement(len(groups), seed=seed, groups=groups)
        assert sorted(perm.tolist()) == list(range(len(groups)))
        assert not np.any(groups[perm] == groups)
    with pytest.raises(InputError, match="largest group"):
        derangement(5, groups=[0, 0, 0, 1, 2])
    with pytest.raises(InputError):
        derangement(1)
