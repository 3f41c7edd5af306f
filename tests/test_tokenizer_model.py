"""BrainTokenizer: shapes, round trip, save/load, refusal of bad input and of another atlas."""

import numpy as np
import pytest
import torch
from test_tokenizer_fixtures import PARCEL_SIZES, low_rank_betas, tiny_config, toy_atlas

from fmrilm.errors import InputError
from fmrilm.tokenizer.model import BrainTokenizer


def train_tokenizer(kind="vq", steps=40, seed=0, **kw):
    torch.manual_seed(seed)
    atlas = toy_atlas()
    model = BrainTokenizer.for_atlas(tiny_config(kind, **kw), atlas)
    x = model.group_vertices(low_rank_betas(atlas, 300, seed=seed))
    text = torch.nn.functional.normalize(torch.randn(300, 12), dim=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        rows = torch.arange(step * 32, step * 32 + 32) % 240  # rows 240.. stay held out
        out = model(x[rows], text[rows])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return model.eval(), atlas, x, out


@pytest.fixture(scope="module")
def trained():
    return train_tokenizer()


def test_layout_follows_atlas_with_padding():
    atlas = toy_atlas()
    model = BrainTokenizer.for_atlas(tiny_config(), atlas)
    assert model.mask.shape == (len(PARCEL_SIZES), max(PARCEL_SIZES))
    assert model.mask.sum(1).tolist() == list(PARCEL_SIZES)
    betas = np.random.default_rng(0).normal(size=(4, atlas.n_vertices)).astype(np.float32)
    grouped, _ = atlas.group(betas)
    assert torch.allclose(model.group_vertices(betas), torch.from_numpy(grouped))


@pytest.mark.parametrize("kind,levels", [("vq", 1), ("rvq", 2), ("fsq", 1)])
def test_encode_decode_shapes_and_parcel_major_order(kind, levels):
    model, atlas, x, out = train_tokenizer(kind, steps=5)
    tokens = model.encode(x[:7])
    assert tokens.dtype == torch.long and tokens.shape == (7, len(PARCEL_SIZES) * levels)
    assert torch.equal(tokens, model.encode_reference(x[:7]))
    # Parcel-major: tokens of parcel p are columns p*L .. p*L+L-1, whatever the other parcels hold.
    changed = x[:7].clone()
    changed[:, 1:] = 0
    assert torch.equal(model.encode(changed)[:, :levels], tokens[:, :levels])
    recon = model.decode(tokens)
    assert recon.shape == x[:7].shape
    assert torch.all(recon[:, ~model.mask.bool()] == 0)  # padding stays empty


def test_round_trip_reconstructs_held_out_scans(trained):
    model, _, x, _ = trained
    held = x[240:]
    recon = model.reconstruct(held)
    mask = model.mask.bool()
    resid = ((recon - held)[:, mask] ** 2).sum()
    total = ((held - held.mean(0))[:, mask] ** 2).sum()
    assert 1 - resid / total > 0.3


def test_training_logs_codebook_health(trained):
    _, _, _, out = trained
    for key in ("loss", "recon", "commit", "contrast", "usage", "perplexity_ratio", "dead_codes"):
        assert key in out and out[key].numel() == 1
    assert 0 < float(out["usage"]) <= 1 and 0 < float(out["perplexity_ratio"]) <= 1
    assert float(out["contrast"]) > 0


def test_save_load_gives_identical_codes(trained, tmp_path):
    model, atlas, x, _ = trained
    model.save_pretrained(tmp_path / "tok")
    loaded = BrainTokenizer.from_pretrained(tmp_path / "tok", atlas)
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.equal(loaded.code_embeddings(), model.code_embeddings())
    assert loaded.describe()["fingerprint"] == model.fingerprint


def test_save_load_residual_shared_codebook(tmp_path):
    model, atlas, x, _ = train_tokenizer("rvq", steps=5)
    model.save_pretrained(tmp_path / "rvq")
    assert torch.equal(BrainTokenizer.from_pretrained(tmp_path / "rvq").encode(x), model.encode(x))


def test_checkpoint_of_another_atlas_is_refused(trained, tmp_path):
    model, _, _, _ = trained
    model.save_pretrained(tmp_path / "tok")
    other = toy_atlas(sizes=(7, 12, 5, 9, 11, 6), name="toy_atlas", seed=3)  # same sizes, other vertices
    with pytest.raises(InputError, match="atlas.fingerprint"):
        BrainTokenizer.from_pretrained(tmp_path / "tok", other)
    with pytest.raises(InputError, match="atlas.n_parcels"):
        BrainTokenizer.from_pretrained(tmp_path / "tok", toy_atlas(sizes=(7, 12, 5)))


def test_tampered_weights_are_refused(trained, tmp_path):
    model, _, _, _ = trained
    model.save_pretrained(tmp_path / "tok")
    with open(tmp_path / "tok" / "model.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\0\0\0\1")
    with pytest.raises(InputError, match="fingerprint"):
        BrainTokenizer.from_pretrained(tmp_path / "tok")


def test_bad_input_is_refused(trained):
    model, atlas, x, _ = trained
    with pytest.raises(InputError, match="empty batch"):
        model.encode(x[:0])
    with pytest.raises(InputError, match="layout"):
        model.encode(x[:, :-1])
    with pytest.raises(InputError, match="layout"):
        model.encode(torch.zeros(2, x.shape[1], x.shape[2] + 1))
    bad = x[:3].clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        model.encode(bad)
    with pytest.raises(InputError, match="vertices"):
        model.group_vertices(np.zeros((2, atlas.n_vertices - 1), np.float32))
    wrong_mask = model.mask.bool().clone()
    wrong_mask[0, -1] = ~wrong_mask[0, -1]
    with pytest.raises(InputError, match="parcel layout"):
        model.check_input(x[:2], mask=wrong_mask)
    with pytest.raises(InputError, match="token ids"):
        model.decode(torch.full((1, len(PARCEL_SIZES)), 64))


def test_separate_level_codebooks_give_level_offset_token_ids():
    model, _, x, _ = train_tokenizer("rvq", steps=5, shared_codebook=False)
    assert model.vocab_size == 128 and model.code_embeddings().shape == (128, 8)
    tokens = model.encode(x[:9]).view(9, len(PARCEL_SIZES), 2)
    assert tokens[..., 0].max() < 64 and tokens[..., 1].min() >= 64  # level l holds ids l*K .. l*K+K-1
    assert torch.equal(model.to_tokens(model.to_indices(tokens.view(9, -1))), tokens.view(9, -1))
    assert model.decode(tokens.view(9, -1)).shape == x[:9].shape
