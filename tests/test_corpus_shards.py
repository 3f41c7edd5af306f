"""Shards: write/read equality, exactly-once multi-rank reading, corrupt shards, idempotent rebuilds."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from tiny_configs import tiny_config

from fmrilm.brain.atlas import Atlas
from fmrilm.config import load_config
from fmrilm.corpus import SCAN
from fmrilm.corpus.build import CorpusConfig, build_corpus, gather_tokens, plan_corpus
from fmrilm.corpus.inputs import open_inputs
from fmrilm.corpus.reader import corpus_loader, corpus_stream
from fmrilm.corpus.shards import iter_tar, load_manifest, verify_split
from fmrilm.corpus.toy import write_toy_inputs
from fmrilm.errors import InputError
from fmrilm.io import read_json


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    paths = write_toy_inputs(root / "inputs", Atlas.schaefer(100))
    cfg = load_config(CorpusConfig, tiny_config("corpus_tiny"), [f"{k}={v}" for k, v in paths.items()])
    summary = build_corpus(cfg, root / "corpus", progress=False)
    return cfg, root / "corpus", summary


def _read_all(stream, num_workers=0):
    return [s for batch in corpus_loader(stream, num_workers, batch_size=8) for s in batch]


def _fingerprint(tokens, meta):
    return json.dumps(meta, sort_keys=True) + np.asarray(tokens).astype(np.int64).tobytes().hex()


def test_write_read_equality(built):
    cfg, corpus, summary = built
    inputs = open_inputs(cfg.task_dataset, cfg.task_tokens, cfg.rest_dataset, cfg.rest_tokens)
    plan = plan_corpus(cfg, inputs, progress=False)
    for split in summary["splits"]:
        read = _read_all(corpus_stream(corpus, split, shuffle_buffer=16))
        manifest = load_manifest(corpus, split)
        assert len(read) == manifest["n_samples"] == summary["splits"][split]["n_samples"]
        expected = sorted(_fingerprint(gather_tokens(inputs, s.scans), s.record)
                          for s in plan.samples if s.split == split)
        got = sorted(_fingerprint(s["tokens.npy"], s["json"]) for s in read)
        assert got == expected
        # the same shards through the standard library alone
        plain = [s for sh in manifest["shards"] for s in iter_tar(corpus / sh["name"])]
        by_key = {s["__key__"]: s for s in read}
        assert sorted(by_key) == sorted(s["__key__"] for s in plain)
        for s in plain:
            np.testing.assert_array_equal(s["tokens.npy"], np.asarray(by_key[s["__key__"]]["tokens.npy"]))
            assert s["json"] == by_key[s["__key__"]]["json"]
            assert s["tokens.npy"].dtype == np.uint16  # ids < 512 need 16 bits, not the inputs' int16


def test_sample_contract(built):
    cfg, corpus, summary = built
    manifest = load_manifest(corpus, "train")
    samples = [s for sh in manifest["shards"] for s in iter_tar(corpus / sh["name"])]
    assert {s["json"]["task"] for s in samples} == set(cfg.samples.tasks)
    for s in samples:
        meta, tokens = s["json"], s["tokens.npy"]
        assert tokens.shape[1] == manifest["tokens_per_scan"] == 100
        assert meta["prompt"].count(SCAN) + meta["answer"].count(SCAN) == tokens.shape[0]
        assert s["__key__"].startswith(f"train-{meta['task']}-")
        if meta["task"] == "temporal":
            assert meta["answer"] == SCAN and tokens.shape[0] == cfg.samples.temporal_context + 1
        if meta["task"] == "text":
            assert tokens.shape[0] == 0 and meta["prompt"] == ""
        if meta["shots"]:
            # every example carries as many scans as the query: a phenotype sample phenotype_scans windows
            per_example = cfg.samples.phenotype_scans if meta["task"] == "phenotype" else 1
            assert tokens.shape[0] == (len(meta["shots"]) + 1) * per_example
            key = "stimulus" if meta["stimulus"] is not None else "subject"
            assert all(sh[key] != meta[key] for sh in meta["shots"])
        if meta["answer_type"] in ("yesno", "class"):
            assert meta["answer"] in meta["choices"]
    assert any(s["json"]["shots"] for s in samples)


def test_two_ranks_two_workers_see_every_sample_once(built, monkeypatch):
    _, corpus, summary = built
    assert summary["splits"]["train"]["n_shards"] >= 4
    keys = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        stream = corpus_stream(corpus, "train", shuffle_buffer=32, seed=5)
        keys += [s["__key__"] for s in _read_all(stream, num_workers=2)]
    assert len(keys) == len(set(keys)) == summary["splits"]["train"]["n_samples"]


def test_resampled_mode_has_explicit_epoch_length(built):
    _, corpus, _ = built
    read = _read_all(corpus_stream(corpus, "train", resampled=True, epoch_length=50, seed=1), 2)
    assert len(read) == 50 and all(s["json"]["split"] == "train" for s in read)
    with pytest.raises(InputError, match="epoch_length"):
        corpus_stream(corpus, "train", resampled=True)


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("at_block_boundary", [True, False])
def test_corrupt_shard_is_skipped_and_counted(built, tmp_path, verify, at_block_boundary):
    _, corpus, summary = built
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    manifest = load_manifest(copy, "train")
    victim = copy / manifest["shards"][1]["name"]
    half = victim.stat().st_size // 2
    cut = half // 512 * 512 if at_block_boundary else half + 100  # between members, or inside one
    victim.write_bytes(victim.read_bytes()[:cut])
    stream = corpus_stream(copy, "train", verify=verify)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read = _read_all(stream)
    assert stream.skipped.shards == 1
    assert any(victim.name in str(w.message) for w in caught)
    assert len(read) == manifest["n_samples"] - manifest["shards"][1]["count"]
    assert not any(s["__url__"].endswith(victim.name) for s in read)


def test_counter_reaches_trainer_across_workers(built, tmp_path):
    _, corpus, _ = built
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    for sh in load_manifest(copy, "train")["shards"][:2]:
        (copy / sh["name"]).write_bytes(b"not a tar file")
    stream = corpus_stream(copy, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _read_all(stream, num_workers=2)
    assert stream.skipped.shards == 2


def test_manifest_checksum_mismatch_is_a_clear_error(built, tmp_path):
    _, corpus, _ = built
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    verify_split(copy, "train")
    shard = copy / load_manifest(copy, "train")["shards"][0]["name"]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"train-000000\.tar: field 'sha256'.*does not match the manifest"):
        verify_split(copy, "train")


def test_rebuild_is_idempotent_and_removes_stale_files(built, tmp_path):
    cfg, corpus, _ = built
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    before = {s: load_manifest(copy, s)["shards"] for s in read_json(copy / "corpus.json")["splits"]}
    (copy / "train-000999.tar").write_bytes(b"stale")
    (copy / ".train-000000.tar.partial-123").write_bytes(b"crashed")
    with pytest.raises(InputError, match="already holds a corpus"):
        build_corpus(cfg, copy, progress=False)
    build_corpus(cfg, copy, overwrite=True, progress=False)
    after = {s: load_manifest(copy, s)["shards"] for s in before}
    assert after == before  # byte-identical shards: same names, counts, sizes and sha256
    assert not (copy / "train-000999.tar").exists()
    assert not list(copy.glob(".*partial*"))


def test_shards_read_through_a_url_template(built):
    _, corpus, summary = built
    stream = corpus_stream(corpus, "val", shard_url=f"pipe:cat {corpus}/{{name}}")
    assert len(_read_all(stream)) == summary["splits"]["val"]["n_samples"] and stream.skipped.shards == 0
