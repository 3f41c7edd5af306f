"""Text metrics against hand-computed values: caption metrics, SemScore, VQA, zero-shot naming."""

import shutil

import numpy as np
import pytest

from fmrilm.errors import InputError
from fmrilm.evaluation.captions import MeteorScorer, caption_metrics, semscore, semscore_from_embeddings, tokenize
from fmrilm.evaluation.naming import names_category, zero_shot_naming
from fmrilm.evaluation.vqa import normalize_answer, vqa_accuracy
from fmrilm.textembed import embed_texts

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer need Java")


@needs_java
def test_ptb_tokenization_lowercases_and_drops_punctuation():
    tokens, tokenizer = tokenize(["A man, riding a horse.", "", "Two dogs play!", ""])
    assert tokenizer == "ptb"
    assert tokens == ["a man riding a horse", "", "two dogs play", ""]


def test_bleu_rouge_by_hand():
    # Candidate: a man riding a horse (5 tokens). References: "a man rides a horse", "a person on a horse".
    # Clipped unigram matches: a×2, man, horse = 4/5; bigrams: "a man", "a horse" = 2/4.
    # The closest reference length is 5, so no brevity penalty:
    # BLEU-1 = 0.8, BLEU-2 = sqrt(0.8 · 0.5).
    # ROUGE-L vs ref 1: LCS "a man a horse" = 4, P = R = 0.8 → F(β=1.2) = 0.8 (the max over references).
    out = caption_metrics(["A man riding a horse."], [["a man rides a horse", "a person on a horse"]], meteor=False)
    assert out["BLEU-1"] == pytest.approx(0.8, abs=1e-6)
    assert out["BLEU-2"] == pytest.approx(np.sqrt(0.4), abs=1e-6)
    assert out["ROUGE-L"] == pytest.approx(0.8, abs=1e-6)
    assert out["SPICE"] is None and "download" in out["unavailable"]["SPICE"]
    assert out["METEOR"] is None and "METEOR" in out["unavailable"]


def test_identical_captions_score_perfectly_and_cider_rewards_the_right_item():
    refs = [["a zebra grazing on grass"], ["a plate of food on a table"], ["a surfer riding a wave"]]
    perfect = caption_metrics([r[0] for r in refs], refs, meteor=False)
    assert perfect["BLEU-1"] == pytest.approx(1.0) and perfect["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["ROUGE-L"] == pytest.approx(1.0)
    swapped = caption_metrics([refs[1][0], refs[2][0], refs[0][0]], refs, meteor=False)
    assert swapped["CIDEr"] < 0.2 * perfect["CIDEr"] and swapped["BLEU-1"] < 0.5


@needs_java
def test_meteor_runs_with_the_machines_java():
    out = caption_metrics(["a man riding a horse", "a zebra in a field"],
                          [["a man rides a horse"], ["a cat on a sofa"]])
    assert "METEOR" not in out["unavailable"]
    assert 0.2 < out["METEOR"] < 0.9


@needs_java
def test_one_meteor_process_scores_several_conditions_as_fresh_ones_do():
    refs = [["a man rides a horse"], ["a cat on a sofa"]]
    conditions = [["a man riding a horse", "a zebra in a field"], ["a horse", "a cat sitting on a sofa"]]
    with MeteorScorer() as meteor:
        shared = [caption_metrics(gen, refs, meteor=meteor)["METEOR"] for gen in conditions]
    assert shared == [caption_metrics(gen, refs)["METEOR"] for gen in conditions]
    assert shared[0] != shared[1]


def test_semscore_by_hand():
    gen = "a zebra standing on grass"
    refs = [gen, "a plate of pasta"]
    emb = embed_texts([gen, refs[1]])
    expected = (1.0 + float(emb[0] @ emb[1])) / 2
    out = semscore([gen, "a cat"], [refs, "a cat"])
    assert out["per_item"][0] == pytest.approx(expected, abs=1e-5)
    assert out["per_item"][1] == pytest.approx(1.0, abs=1e-5)
    assert out["semscore"] == pytest.approx((expected + 1.0) / 2, abs=1e-5)
    # Embedding-level helper: item 0 has references at rows 0 and 1, item 1 at row 2.
    e = np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(semscore_from_embeddings(e[:2], e[[0, 2, 1]], [0, 0, 1]), [0.5, 1.0])
    with pytest.raises(InputError, match="no reference"):
        semscore(["x"], [[]])


@pytest.mark.parametrize("raw, normal", [
    ("Three.", "3"), ("The  two zebras!", "2 zebras"), ("an apple", "apple"), ("Yes", "yes"),
    ("2.5", "2.5"), ("1,000", "1000"), ("It's red-and-white", "its red and white"), ("ZERO", "0"),
    ("a", ""), ("the theater", "theater"),
])
def test_vqa_normalization(raw, normal):
    assert normalize_answer(raw) == normal


def test_vqa_accuracy_by_question_type():
    preds = ["Three", "two", "red", "no", "A Dog."]
    answers = [["3"], "3", ["red", "crimson"], "yes", "dog"]
    types = ["count", "count", "color", "yes/no", "object"]
    out = vqa_accuracy(preds, answers, types)
    assert out["overall"] == pytest.approx(3 / 5) and out["n"] == 5
    assert out["by_type"]["count"] == {"accuracy": 0.5, "n": 2}
    assert out["by_type"]["color"]["accuracy"] == 1.0 and out["by_type"]["yes/no"]["accuracy"] == 0.0
    with pytest.raises(InputError, match="rows"):
        vqa_accuracy(["a"], ["a", "b"])


def test_zero_shot_naming_with_plurals_and_synonyms():
    assert names_category("Two zebras grazing", "zebra")
    assert names_category("buses parked by the road", "bus") and not names_category("a busy road", "bus")
    assert names_category("three ponies", "pony") and names_category("a red fire hydrants", "fire hydrant")
    assert not names_category("a fire near a hydrant", "fire hydrant")
    synonyms = {"surfer": ["man surfing", "surfboarder"], "airplane": ["plane", "jet"]}
    captions = ["a man surfing a wave", "a person on a beach", "a jet on the runway", "a plane", "planes"]
    categories = ["surfer", "surfer", "airplane", "airplane", ["zebra", "airplane"]]
    out = zero_shot_naming(captions, categories, synonyms)
    assert out["fraction"] == pytest.approx(4 / 5)
    assert out["by_category"]["surfer"] == {"fraction": 0.5, "n": 2}
    assert out["by_category"]["airplane"] == {"fraction": 1.0, "n": 3}
    assert out["by_category"]["zebra"] == {"fraction": 0.0, "n": 1}
