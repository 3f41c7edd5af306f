"""Scene graphs, captions and QA: answers agree with graphs and captions; novel categories stay held out."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fmrilm.brain.scenes import (
    CATEGORIES,
    CATEGORY_SYNONYMS,
    COLOURS,
    DEFAULT_NOVEL,
    NUMBER_WORDS,
    SCENES,
    SIZES,
    captions_for,
    check_novel,
    make_stimuli,
    mentions,
)
from fmrilm.errors import InputError


@pytest.fixture(scope="module")
def stimuli():
    return make_stimuli(400, np.random.default_rng(3), DEFAULT_NOVEL, 0.05)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def has_phrase(text: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}\b", text.lower()) is not None


def test_captions_match_graph(stimuli):
    for stim in stimuli:
        objs = stim["graph"]["objects"]
        colours = {o["colour"] for o in objs}
        sizes = {o["size"] for o in objs}
        numbers = {NUMBER_WORDS[o["count"]] for o in objs if o["count"] > 1}
        assert 4 <= len(stim["captions"]) == len(set(stim["captions"]))
        for caption in stim["captions"]:
            tokens = set(words(caption))
            assert tokens & set(COLOURS) <= colours, caption
            assert tokens & set(SIZES) <= sizes, caption
            assert tokens & set(NUMBER_WORDS.values()) <= numbers, caption
            for obj in objs:
                plural = CATEGORIES[obj["category"]][0]
                if obj["count"] == 1:
                    assert has_phrase(caption, obj["category"]), (caption, obj)
                else:
                    assert re.search(rf"\b{NUMBER_WORDS[obj['count']]} (\w+ )*{plural}\b", caption.lower()), (
                        caption
                    )


def test_qa_answers_match_graph_and_captions(stimuli):
    types_seen = set()
    for stim in stimuli:
        graph = stim["graph"]
        by_category = {o["category"]: o for o in graph["objects"]}
        text = " ".join(stim["captions"])
        for qa in stim["qa"]:
            types_seen.add(qa["type"])
            q, a = qa["question"], qa["answer"]
            if qa["type"] == "where":
                assert a == graph["scene"]
            elif qa["type"] == "what":
                obj = by_category[a]
                assert sum(o["supercategory"] == obj["supercategory"] for o in graph["objects"]) == 1
                assert mentions(text, a)
            elif qa["type"] == "how many":
                (obj,) = [o for o in graph["objects"] if f"many {CATEGORIES[o['category']][0]} are" in q]
                assert a == str(obj["count"])
            elif qa["type"] == "what colour":
                (obj,) = [
                    o
                    for o in graph["objects"]
                    if re.search(
                        rf"the ({re.escape(o['category'])}|{re.escape(CATEGORIES[o['category']][0])})\?", q
                    )
                ]
                assert a == obj["colour"]
            else:
                name = re.match(r"Is there an? (.+) in the image\?", q).group(1)
                assert a == ("yes" if name in by_category else "no")
                assert mentions(text, name) == (a == "yes")
    assert types_seen == {"where", "what", "how many", "what colour", "is there"}


def test_novel_stimuli_name_their_category_and_others_never_do(stimuli):
    novel = [s for s in stimuli if s["novel"]]
    assert len(novel) == round(0.05 * len(stimuli))
    assert {c for s in novel for c in s["categories"] if c in DEFAULT_NOVEL} == set(DEFAULT_NOVEL)
    for stim in stimuli:
        held = [c for c in stim["categories"] if c in DEFAULT_NOVEL]
        texts = stim["captions"] + [qa["question"] + " " + qa["answer"] for qa in stim["qa"]]
        if stim["novel"]:
            assert held and all(mentions(cap, held[0]) for cap in stim["captions"])
        else:
            assert not held
            assert not any(mentions(t, c) for t in texts for c in DEFAULT_NOVEL), stim["captions"]


def test_deterministic_for_a_seed():
    a = make_stimuli(50, np.random.default_rng(11))
    b = make_stimuli(50, np.random.default_rng(11))
    c = make_stimuli(50, np.random.default_rng(12))
    assert a == b and a != c


def test_vocabulary_is_complete():
    in_scenes = {c for _, cats in SCENES.values() for c in cats}
    assert set(CATEGORIES) == in_scenes
    assert len(CATEGORIES) >= 55
    assert all(c in CATEGORY_SYNONYMS[c] for c in CATEGORIES)
    assert mentions("A plane flying overhead.", "airplane") and not mentions("An airport bus.", "airplane")


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="novel_categories"):
        check_novel(["unicorn"])
    with pytest.raises(InputError, match="novel_fraction"):
        make_stimuli(10, np.random.default_rng(0), novel_fraction=1.5)
    with pytest.raises(InputError, match="captions"):
        captions_for(make_stimuli(1, np.random.default_rng(0))[0]["graph"], np.random.default_rng(0), n=50)
