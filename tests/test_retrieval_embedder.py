"""Brain embedder (contrastive head into the text space) and the `fmrilm search` command."""

import argparse
import json
import math

import numpy as np
import pytest
import torch

from fmrilm.errors import InputError
from fmrilm.evaluation.retrieval_metrics import n_way_retrieval
from fmrilm.io import read_json, save_npy, write_json
from fmrilm.retrieval import commands
from fmrilm.retrieval.brain_embedder import BrainEmbedder, BrainEmbedderConfig, symmetric_info_nce, train_brain_embedder
from fmrilm.retrieval.index import SemanticIndex

TINY = BrainEmbedderConfig(hidden=64, n_blocks=1, dropout=0.0, epochs=40, batch_size=32, lr=3e-3, seed=0)


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def world():
    """Stimuli have 12 latent factors; captions and brain features are two linear views of them
    (plus trial noise in the brain), like MiniLM embeddings of scenes with a few varying parts.

    Train and test stimuli are disjoint, so retrieval on the test set needs generalisation.
    """
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((80, 12))
    captions = unit(latent @ rng.standard_normal((12, 384)))
    stim = np.repeat(np.arange(80), 3)
    features = (latent[stim] @ rng.standard_normal((12, 48)) + 0.5 * rng.standard_normal((len(stim), 48)))
    features = features.astype(np.float32)
    train = stim < 60
    return captions, stim, features, train


@pytest.fixture(scope="module")
def trained(world):
    captions, stim, features, train = world
    return train_brain_embedder(features[train], captions[stim[train]], TINY, progress=False)


def test_training_lowers_the_loss_and_retrieves_held_out_stimuli(world, trained):
    captions, stim, features, train = world
    model, history = trained
    assert len(history) == TINY.epochs and history[-1] < 0.5 * history[0]
    test = ~train
    # One row per stimulus (mean of its trials), as the n-way protocol asks.
    emb = model.embed(features[test]).reshape(20, 3, -1).mean(1)
    np.testing.assert_allclose(np.linalg.norm(model.embed(features[:5]), axis=1), 1.0, atol=1e-5)
    scores = n_way_retrieval(emb, captions[60:], n_way=20, n_draws=5)
    assert scores["brain_to_caption"]["top1"] >= 0.8 and scores["caption_to_brain"]["top1"] >= 0.8


def test_training_is_deterministic_for_a_seed(world):
    captions, stim, features, _ = world
    cfg = BrainEmbedderConfig(hidden=32, n_blocks=1, epochs=2, batch_size=32, seed=3)
    a = train_brain_embedder(features[:64], captions[stim[:64]], cfg, progress=False)[0]
    b = train_brain_embedder(features[:64], captions[stim[:64]], cfg, progress=False)[0]
    np.testing.assert_array_equal(a.embed(features[:8]), b.embed(features[:8]))


def test_info_nce_treats_identical_captions_as_shared_positives():
    text = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    # Brain rows equal to their text with a huge temperature: rows 0 and 1 split their mass over
    # two equally good positives, so each costs log 2; row 2 costs 0. Mean over rows: (2 log 2) / 3.
    loss = symmetric_info_nce(text, text, torch.tensor(math.log(100.0)))
    assert loss.item() == pytest.approx(2 * math.log(2) / 3, abs=1e-4)


def test_save_load_round_trip_and_refusals(tmp_path, world, trained):
    _, _, features, _ = world
    model, history = trained
    model.save(tmp_path / "emb", summary={"final_loss": history[-1]})
    loaded = BrainEmbedder.load(tmp_path / "emb")
    np.testing.assert_array_equal(model.embed(features[:10]), loaded.embed(features[:10]))
    assert read_json(tmp_path / "emb" / "config.json")["summary"]["final_loss"] == history[-1]
    with pytest.raises(InputError, match="the embedder takes 48"):
        loaded.embed(features[:2, :40])
    with pytest.raises(InputError, match="already exists"):
        model.save(tmp_path / "emb")
    info = read_json(tmp_path / "emb" / "config.json")
    info["config"]["hidden"] = 128
    write_json(tmp_path / "emb" / "config.json", info)
    with pytest.raises(InputError, match="do not match config.json"):
        BrainEmbedder.load(tmp_path / "emb")


def test_training_refuses_mismatched_rows(world):
    captions, _, features, _ = world
    with pytest.raises(InputError, match="text embeddings"):
        train_brain_embedder(features[:10], captions[:9], TINY, progress=False)
    with pytest.raises(InputError, match="384"):
        train_brain_embedder(features[:10], captions[:10, :100], TINY, progress=False)


def run_search(argv):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["search", *argv])
    return args.handler(args)


def test_search_command_with_embeddings_and_features(tmp_path, capsys, world, trained):
    captions, stim, features, _ = world
    model, _ = trained
    keys = [f"stim-{m:06d}" for m in range(80)]
    SemanticIndex.build(captions, keys, [{"caption": f"caption {m}"} for m in range(80)]).save(tmp_path / "ix")
    model.save(tmp_path / "emb")
    save_npy(tmp_path / "q.npy", captions[7])
    assert run_search(["--index", str(tmp_path / "ix"), "--scan-embedding", str(tmp_path / "q.npy"),
                       "-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip())
    assert [h["rank"] for h in result["results"]] == [1, 2, 3]
    assert result["results"][0]["id"] == "stim-000007"
    assert result["results"][0]["metadata"] == {"caption": "caption 7"}
    save_npy(tmp_path / "f.npy", features[:6])
    assert run_search(["--index", str(tmp_path / "ix"), "--scan-features", str(tmp_path / "f.npy"),
                       "--embedder", str(tmp_path / "emb"), "-k", "2"]) == 0
    assert capsys.readouterr().out.count("query:") == 6
    with pytest.raises(InputError, match="embedder"):
        run_search(["--index", str(tmp_path / "ix"), "--scan-features", str(tmp_path / "f.npy")])
