"""`fmrilm search --run RUN --scan ID | --text …`: a run's search indexes, both directions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_evaluation_runner import build_tiny_run, cli

from fmrilm.errors import InputError
from fmrilm.retrieval.brain_embedder import BrainEmbedderConfig
from fmrilm.retrieval.index import SemanticIndex
from fmrilm.retrieval.search import SearchIndexConfig, build_search_indexes, embed_scan

TINY = BrainEmbedderConfig(hidden=32, n_blocks=1, epochs=3, batch_size=32)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_task_world):
    run = build_tiny_run(tmp_path_factory.mktemp("search"), tiny_task_world)
    cfg = SearchIndexConfig(corpus=str(run / "corpus"), tokenizer=str(run / "tokenizer"),
                            out=str(run / "retrieval"), max_train_items=90, embedder=TINY)
    build_search_indexes(cfg, progress=False)
    return run, cfg


def search_json(capsys, *argv) -> list[dict]:
    assert cli(["search", *argv, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_indexes_hold_every_caption_and_every_test_scan(run):
    run, _ = run
    info = json.loads((run / "retrieval" / "search.json").read_text())
    captions, scans = (SemanticIndex.load(run / "retrieval" / name) for name in ("captions", "scans"))
    stimuli = [json.loads(line) for line in (run / "task_world" / "stimuli.jsonl").read_text().splitlines()]
    scenes = [json.loads(line) for line in (run / "task_world" / "text_scenes.jsonl").read_text().splitlines()]
    assert scenes and captions.ids == [row["key"] for row in stimuli] + [row["key"] for row in scenes]
    assert {m["split"] for m in captions.metadata} == {"train", "val", "test", "text_only"}
    assert info["n_text_only"] == len(scenes)
    test_keys = {m["stimulus"] for m in captions.metadata if m["split"] == "test"}
    assert {m["stimulus"] for m in scans.metadata} == test_keys
    assert len(scans) == info["n_scans"] == 3 * len(test_keys)  # every subject × every test stimulus
    assert info["n_train_scans"] == 90 and np.isfinite(info["final_train_loss"])


def test_scan_query_returns_captions_and_matches_the_indexed_scan(run, capsys):
    run, _ = run
    scans = SemanticIndex.load(run / "retrieval" / "scans")
    scan_id = scans.ids[5]
    (result,) = search_json(capsys, "--run", str(run), "--scan", scan_id, "-k", "4")
    hits = result["results"]
    assert result["query"] == scan_id and [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert all(h["id"].startswith("stim-") and h["metadata"]["caption"] for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # The query embedding is exactly the one indexed for that scan: searching the scan index finds itself.
    scores, ids, _ = scans.search(embed_scan(run / "retrieval", scan_id), k=1)
    assert ids[0][0] == scan_id and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    # Subject and stimulus may be given as rows, as with `fmrilm ask`.
    subject, stimulus = scan_id.split("/")
    row = int(stimulus.split("-")[1])
    (by_row,) = search_json(capsys, "--run", str(run), "--scan", f"{int(subject.split('-')[1]) - 1}/{row}", "-k", "4")
    assert [h["id"] for h in by_row["results"]] == [h["id"] for h in hits]


def test_text_query_returns_test_scans(run, capsys):
    run, _ = run
    results = search_json(capsys, "--run", str(run), "--text", "a dog on the grass", "two red boats", "-k", "3")
    assert [r["query"] for r in results] == ["a dog on the grass", "two red boats"]
    scan_ids = set(SemanticIndex.load(run / "retrieval" / "scans").ids)
    for r in results:
        assert len(r["results"]) == 3 and all(h["id"] in scan_ids for h in r["results"])
        assert set(r["results"][0]["metadata"]) == {"subject", "stimulus", "caption"}


def test_bad_queries_and_missing_indexes_are_refused(run, tmp_path, capsys):
    run, cfg = run
    for argv, message in ((["--run", str(run), "--scan", "sub-01/stim-999999"], "field 'stimulus'"),
                          (["--run", str(run), "--scan", "sub-01"], "field 'format'"),
                          (["--run", str(tmp_path), "--text", "a dog"], "directory missing")):
        assert cli(["search", *argv]) == 2
        captured = capsys.readouterr()
        assert message in captured.err and not captured.out
    with pytest.raises(InputError, match="already exists"):
        build_search_indexes(cfg)


def test_retriever_bank_adds_text_only_scenes_only_when_asked(run):
    from fmrilm.retrieval.caption_prompts import CaptionRetriever

    run, _ = run
    plain = CaptionRetriever.from_search_dir(run / "retrieval", k=2)
    wide = CaptionRetriever.from_search_dir(run / "retrieval", k=2, text_only=True)
    assert plain.n_text_only == 0 and wide.n_text_only > 0
    assert len(wide.captions) == len(plain.captions) + wide.n_text_only
    stimuli = [json.loads(line) for line in (run / "task_world" / "stimuli.jsonl").read_text().splitlines()]
    splits = json.loads((run / "retrieval" / "search.json").read_text())
    text_only = {m["caption"] for m in wide.captions.metadata if m["text_only"]}
    assert all(m["stimulus_index"] == -1 for m in wide.captions.metadata if m["text_only"])
    heldout = {c for row, m in zip(stimuli, SemanticIndex.load(run / "retrieval" / "captions").metadata)
               if m["split"] in ("val", "test") for c in row["captions"]}
    assert splits["n_text_only"] >= len(text_only) and not (text_only & heldout)
