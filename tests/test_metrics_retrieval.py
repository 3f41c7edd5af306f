"""N-way retrieval (MindEye protocol, distinct candidates), its top-1 gap interval, and the
shuffled-brain derangement."""

import numpy as np
import pytest

from fmrilm.errors import InputError
from fmrilm.evaluation.controls import derangement, shuffled_control
from fmrilm.evaluation.retrieval_metrics import n_way_from_scores, n_way_retrieval, topk_hits


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
    with pytest.raises(InputError, match="distinct captions"):
        n_way_retrieval(captions[:1], captions[:1])
    with pytest.raises(InputError, match="distinct captions"):
        n_way_retrieval(captions[:10], captions[:10], groups=["same"] * 10)
    with pytest.raises(InputError, match="does not pair"):
        n_way_retrieval(captions[:100], captions[:99], n_way=50)
    with pytest.raises(InputError, match="ks"):
        n_way_retrieval(captions[:100], captions[:100], n_way=3, ks=(1, 5))
    with pytest.raises(InputError, match="caption labels"):
        n_way_retrieval(captions[:10], captions[:10], n_way=5, groups=list(range(9)))
    with pytest.raises(InputError, match="square"):
        n_way_from_scores(np.zeros((4, 5)), n_way=3, n_draws=1, ks=(1,))


def _mindeye_reference(brain, captions, n_way, n_draws, seed, k=1):
    """The protocol as first written: draws of n_way items, the square block scored per draw."""
    b = brain / np.linalg.norm(brain, axis=1, keepdims=True)
    c = captions / np.linalg.norm(captions, axis=1, keepdims=True)
    rng, out = np.random.default_rng(seed), []
    for _ in range(n_draws):
        pick = rng.choice(len(b), size=n_way, replace=False)
        out.append(topk_hits(b[pick] @ c[pick].T, [k])[k].mean())
    return float(np.mean(out))


def test_distinct_captions_keep_the_mindeye_draws(captions):
    brain = captions + np.random.default_rng(2).standard_normal(captions.shape) * 2.0
    out = n_way_retrieval(brain, captions, n_way=100, n_draws=5, seed=4, groups=[f"c{i}" for i in range(900)])
    assert out["brain_to_caption"]["top1"] == pytest.approx(_mindeye_reference(brain, captions, 100, 5, 4))
    assert (out["n_way"], out["n_draws"], out["n_distinct"]) == (100, 5, 900)
    sim = (brain / np.linalg.norm(brain, axis=1, keepdims=True)) @ (
        captions / np.linalg.norm(captions, axis=1, keepdims=True)).T
    from_scores = n_way_from_scores(sim, n_way=100, n_draws=5, seed=4)
    for direction in ("brain_to_caption", "caption_to_brain"):
        assert from_scores[direction]["top1"] == pytest.approx(out[direction]["top1"])


def test_n_way_beyond_the_distinct_captions_runs_once_over_all(captions):
    brain = captions[:120] + np.random.default_rng(3).standard_normal((120, 64)) * 2.0
    out = n_way_retrieval(brain, captions[:120], n_way=300, n_draws=30, seed=0)
    assert (out["n_way"], out["n_draws"], out["n_distinct"], out["n_items"]) == (120, 1, 120, 120)
    assert out["brain_to_caption"]["top1_std"] == 0.0 and out["chance"]["top1"] == 1 / 120
    assert out["brain_to_caption"]["top1"] == pytest.approx(_mindeye_reference(brain, captions[:120], 120, 1, 0))
    again = n_way_retrieval(brain, captions[:120], n_way=300, n_draws=30, seed=9)
    assert {**again, "seed": 0} == out  # nothing left to draw: the seed does not matter


def test_shared_captions_are_one_candidate(captions):
    # 60 items, 40 distinct captions: items 40..59 repeat the captions of items 0..19.
    text = np.concatenate([captions[:40], captions[:20]])
    labels = [f"caption {i}" for i in range(40)] + [f"caption {i}" for i in range(20)]
    perfect = text * 2.0
    without = n_way_retrieval(perfect, text, n_way=300, n_draws=1)
    assert without["n_distinct"] == 60 and without["brain_to_caption"]["top1"] < 1.0  # ties with the twin caption
    out = n_way_retrieval(perfect, text, n_way=300, n_draws=30, groups=labels, per_query=True)
    assert (out["n_way"], out["n_draws"], out["n_distinct"], out["n_items"]) == (40, 1, 40, 60)
    assert out["brain_to_caption"]["top1"] == 1.0 and out["chance"]["top1"] == 1 / 40
    # caption→brain: the twin's brain is not a candidate, so the caption finds its own brain
    assert out["caption_to_brain"]["top1"] == 1.0
    drawn = n_way_retrieval(perfect, text, n_way=10, n_draws=20, groups=labels, seed=1)
    assert drawn["n_way"] == 10 and drawn["brain_to_caption"]["top1"] == 1.0


def test_per_query_shares_average_to_the_accuracy(captions):
    brain = captions[:200] + np.random.default_rng(4).standard_normal((200, 64)) * 1.5
    labels = [i % 150 for i in range(200)]
    for n_way, n_draws in ((50, 7), (300, 30)):
        out = n_way_retrieval(brain, captions[:200], n_way=n_way, n_draws=n_draws, groups=labels, per_query=True)
        for direction in ("brain_to_caption", "caption_to_brain"):
            for k in (1, 5):
                share = out["per_query"][direction][f"top{k}"]
                assert share.shape == (200,) and share.mean() == pytest.approx(out[direction][f"top{k}"])
    assert "per_query" not in n_way_retrieval(brain, captions[:200], n_way=50, n_draws=2)


def test_top1_gap_interval_resamples_query_stimuli(captions):
    from types import SimpleNamespace

    from fmrilm.evaluation.retrieval_eval import per_subject_n_way, top1_difference_ci

    rng = np.random.default_rng(6)
    stimulus = np.tile(np.arange(150), 2)
    subject = np.repeat([0, 1], 150)
    text = captions[stimulus]
    good, poor = text + rng.standard_normal(text.shape) * 1.2, text + rng.standard_normal(text.shape) * 2.0
    cfg = SimpleNamespace(n_way=100, n_draws=6, seed=0)
    labels = [f"c{m}" for m in stimulus]
    (good_result, good_share), (poor_result, poor_share) = (per_subject_n_way(b, text, subject, labels, cfg)
                                                            for b in (good, poor))
    gap = good_result["brain_to_caption"]["top1"] - poor_result["brain_to_caption"]["top1"]
    assert good_result["n_subjects"] == 2 and "per_query" not in good_result
    assert (good_share - poor_share).mean() == pytest.approx(gap)
    low, high = top1_difference_ci(good_share, poor_share, stimulus)
    assert low <= gap <= high and 0.0 < low
    assert top1_difference_ci(good_share, good_share, stimulus) == [0.0, 0.0]


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
