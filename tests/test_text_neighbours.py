"""Stage 0's neighbour-prompted texts: format, own stimulus left out, nearest by content words."""

import pytest

from fmrilm.errors import InputError
from fmrilm.retrieval.caption_prompts import PREFIX, SEPARATOR
from fmrilm.retrieval.text_neighbours import CaptionNeighbours, neighbour_prompted_answers, neighbour_prompted_captions

CAPTIONS = ["two zebras on the savanna", "a zebra on the savanna", "a red bus on a street",
            "a bus on a city street", "a cat on a bed", "two zebras on the savanna"]
STIMULI = [0, 0, 1, 2, 3, 4]  # stimulus 0 has two captions; 4 repeats one of 0's sentences


def parse(text):
    head, rest = text.split("\n")
    assert head.startswith(PREFIX)
    return head[len(PREFIX):].split(SEPARATOR), rest


def test_one_text_per_distinct_pair_nearest_other_stimulus_first():
    # a caption repeated by another subject (same stimulus, same sentence) gives one text
    texts = neighbour_prompted_captions(CaptionNeighbours(CAPTIONS + ["a red bus on a street"], STIMULI + [1]), k=2)
    assert len(texts) == len(CAPTIONS)
    neighbours, caption = parse(texts[2])
    assert caption == "a red bus on a street" and neighbours[0] == "a bus on a city street"
    assert len(neighbours) == 2


def test_no_neighbour_is_a_caption_of_the_stimulus_itself():
    texts = neighbour_prompted_captions(CaptionNeighbours(CAPTIONS, STIMULI), k=3)
    for text, stimulus in zip(texts, STIMULI, strict=True):
        neighbours, _ = parse(text)
        own = {c for c, s in zip(CAPTIONS, STIMULI, strict=True) if s == stimulus}
        assert not own & set(neighbours)
    # stimulus 4's sentence is also one of stimulus 0's captions: it never prompts stimulus 0
    assert "two zebras on the savanna" not in parse(texts[0])[0]


def test_answers_follow_the_neighbours_of_their_stimulus_first_caption():
    neighbours = CaptionNeighbours(CAPTIONS, STIMULI)
    (text,) = neighbour_prompted_answers(neighbours, ["Where was this picture taken?"], ["street"], [1], k=1)
    found, rest = parse(text)
    assert found == ["a bus on a city street"] and rest == "Where was this picture taken? street"
    with pytest.raises(InputError, match="no caption"):
        neighbour_prompted_answers(neighbours, ["How many dogs are there?"], ["2"], [9])


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="stimuli"):
        CaptionNeighbours(CAPTIONS, STIMULI[:-1])
    with pytest.raises(InputError, match="two stimuli"):
        CaptionNeighbours(["a", "b"], [7, 7])
    with pytest.raises(InputError, match="k >= 1"):
        neighbour_prompted_captions(CaptionNeighbours(CAPTIONS, STIMULI), k=0)
