"""Retrieval-augmented prompts: neighbours from the brain embedding, own stimulus left out, the query of a k-shot
prompt, persistence."""

import numpy as np
import pytest

from fmrilm.corpus import SCAN
from fmrilm.corpus.phrasing import SHOT_SEPARATOR, with_shots
from fmrilm.errors import InputError
from fmrilm.retrieval.brain_embedder import BrainEmbedderConfig, train_brain_embedder
from fmrilm.retrieval.caption_prompts import PREFIX, CaptionRetriever
from fmrilm.retrieval.index import SemanticIndex

K_CODES, C, SLOTS = 12, 3, 4  # 12 codes of width 3, 4 tokens per scan


@pytest.fixture(scope="module")
def retriever():
    """Six stimuli; stimulus m's scans use codes near 2m. Captions 4 and 5 are the same sentence."""
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(K_CODES, C)).astype(np.float32)
    captions = ["a red bus", "two dogs", "a cat on a bed", "a kite in the sky", "three boats", "three boats"]
    text = np.eye(6, 16, dtype=np.float32)  # one direction per stimulus
    scans = np.array([[2 * m + (j % 2) for j in range(SLOTS)] for m in range(6) for _ in range(20)])
    stimulus = np.repeat(np.arange(6), 20)
    embedder, _ = train_brain_embedder(codes[scans].reshape(len(scans), -1), text[stimulus],
                                       BrainEmbedderConfig(hidden=32, n_blocks=1, out_dim=16, epochs=60,
                                                           batch_size=40), progress=False)
    index = SemanticIndex.build(text, [f"s{m}" for m in range(6)],
                                [{"caption": c, "stimulus_index": m} for m, c in enumerate(captions)])
    return CaptionRetriever(codes, embedder, index, k=2)


def scan_of(m):
    return np.array([[2 * m, 2 * m + 1, 2 * m, 2 * m + 1]])


def test_neighbours_come_from_the_scan_and_skip_its_own_stimulus(retriever):
    assert retriever.neighbours(scan_of(2))[0][0] == "a cat on a bed"
    assert "a cat on a bed" not in retriever.neighbours(scan_of(2), exclude=[2])[0]
    # stimuli 4 and 5 share a caption: it is written once
    found = retriever.neighbours(scan_of(4))[0]
    assert found[0] == "three boats" and len(set(found)) == len(found) == 2


def test_only_prompts_whose_query_has_one_scan_are_augmented(retriever):
    prompts = ["Describe <scan>", "Caption it", "Compare <scan> and <scan>"]
    out = retriever.augment(prompts, [scan_of(0), None, np.concatenate([scan_of(0), scan_of(1)])])
    assert out[0].startswith(PREFIX + "a red bus") and out[0].endswith("\nDescribe <scan>")
    assert out[1:] == prompts[1:]


def test_a_k_shot_prompt_carries_its_query_scans_prefix(retriever):
    query = f"Describe {SCAN}"
    k2 = with_shots(query, [(query, "two dogs"), (query, "a kite in the sky")])
    scans = np.concatenate([scan_of(1), scan_of(3), scan_of(2)])  # the examples' scans, then the query's
    (out,) = retriever.augment([k2], [scans])
    (zero_shot,) = retriever.augment([query], [scan_of(2)])
    assert zero_shot.startswith(PREFIX + "a cat on a bed")  # the query's neighbours, not the examples'
    # the examples stay as they were; the query reads exactly as the zero-shot prompt does
    assert out == SHOT_SEPARATOR.join([f"{query} two dogs", f"{query} a kite in the sky", zero_shot])
    assert out.count(PREFIX) == 1
    # in training the query's own stimulus is left out, as for zero-shot prompts
    (trained,) = retriever.augment([k2], [scans], exclude=[2])
    assert "a cat on a bed" not in trained.split(SHOT_SEPARATOR)[-1]


def test_save_load_round_trip(tmp_path, retriever):
    retriever.save(tmp_path / "retriever")
    loaded = CaptionRetriever.load(tmp_path / "retriever")
    scans = np.concatenate([scan_of(m) for m in range(6)])
    assert loaded.neighbours(scans) == retriever.neighbours(scans) and loaded.k == 2


def test_out_of_range_tokens_are_refused(retriever):
    with pytest.raises(InputError, match="codebook ids"):
        retriever.neighbours(np.array([[0, 1, 2, K_CODES]]))
