"""Rest runs as fMRI-LM tokenizes them: W-TR patches of each parcel, P × (T // W) tokens per run."""

import numpy as np
import pytest
import torch
from scipy.io import savemat

from fmrilm.brain.rest_dir import import_rest_dir
from fmrilm.brain.store import Dataset
from fmrilm.errors import InputError
from fmrilm.tokenizer.config import QuantizerConfig, TokenizerConfig
from fmrilm.tokenizer.data import rest_windows, tokenizer_for_dataset
from fmrilm.tokenizer.evaluate import rest_run_fidelity
from fmrilm.tokenizer.tokens import write_tokens_dataset

P, T, W = 6, 43, 8  # 43 TRs: five whole patches, three trailing TRs dropped


class Codec:
    """A stand-in tokenizer whose "codes" are the patches themselves (decode = `decode_fn` of them)."""

    def __init__(self, decode_fn):
        self.width, self.decode_fn = W, decode_fn

    def eval(self):
        return self

    def encode(self, x, source):
        return x

    def decode(self, tokens):
        return self.decode_fn(tokens)


def test_whole_run_fidelity_stitches_patches_back_in_time_order():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(P, P))
    series = (rng.normal(size=(3, T, P)) @ mixing).astype(np.float32)  # correlated parcels
    perfect = rest_run_fidelity(Codec(lambda t: t), series)
    assert perfect["tokens_per_run"] == P * (T // W) == 30
    assert perfect["r2"] == pytest.approx(1.0) and perfect["fc_r"] == pytest.approx(1.0)
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant run has no FC
        silent = rest_run_fidelity(Codec(torch.zeros_like), series)
    assert silent["r2"] == pytest.approx(0.0, abs=0.01)  # the runs are z-scored: zeros are their mean
    # reversing time inside every patch keeps each patch's values but not the run: R² drops
    flipped = rest_run_fidelity(Codec(lambda t: t.flip(-1)), series)
    assert flipped["r2"] < 0.5 and flipped["fc_r"] > 0.9  # zero-lag FC does not see the order


def test_a_run_shorter_than_one_patch_is_refused():
    with pytest.raises(InputError, match="fewer than one window of 8"):
        rest_windows(np.zeros((1, 7, P), np.float32), W, "run.mat")


@pytest.fixture()
def mat_dataset(tmp_path):
    """Four .mat runs of unequal length with a planted two-factor structure, imported as a rest dataset."""
    table = tmp_path / "regions.tsv"
    table.write_text("index\tname\themisphere\n" + "".join(f"{i + 1}\tR{i}\tLH\n" for i in range(P)))
    runs = tmp_path / "runs"
    runs.mkdir()
    rng = np.random.default_rng(3)
    loading = rng.normal(size=(2, P))
    for s, n_time in enumerate((T, T + 5, T + 2, T)):
        slow = np.cumsum(rng.normal(size=(n_time, 2)), 0)  # smooth signals: patches are compressible
        savemat(runs / f"sub-{s}.mat", {"tc": (slow @ loading + 0.1 * rng.normal(size=(n_time, P))).T})
    return Dataset(import_rest_dir(runs, tmp_path / "ds", tr=0.72, region_table=table))


def test_rest_tokenizer_on_mat_runs_writes_every_patch_and_reconstructs(mat_dataset, tmp_path):
    torch.manual_seed(0)
    cfg = TokenizerConfig(input="rest", window=W, hidden_dim=32, code_dim=8, contrastive="none",
                          quantizer=QuantizerConfig(codebook_size=32, kmeans_init=True))
    tokenizer = tokenizer_for_dataset(cfg, mat_dataset.path)
    series = np.asarray(mat_dataset.array("timeseries"))
    x = torch.from_numpy(rest_windows(series, W).reshape(-1, P, W))
    optimiser = torch.optim.Adam(tokenizer.parameters(), lr=3e-3)
    tokenizer.train()
    for _ in range(150):
        optimiser.zero_grad()
        tokenizer(x)["loss"].backward()
        optimiser.step()
    after = rest_run_fidelity(tokenizer, series)
    assert after["r2"] > 0.5 and after["fc_r"] > 0.8
    tokens = Dataset(write_tokens_dataset(tokenizer, mat_dataset.path, tmp_path / "tokens"), kind="tokens")
    assert tokens.array("tokens").shape == (4, T // W, P)  # every patch of every run, parcel-major
    assert tokens.manifest["window"] == W and tokens.manifest["tokenizer"]["atlas"]["name"] == "regions"
    codes = torch.from_numpy(np.asarray(tokens.array("tokens")[1], np.int64))
    np.testing.assert_allclose(tokenizer.decode(codes).numpy(),
                               tokenizer.decode(tokenizer.encode(x[T // W:2 * (T // W)])).numpy(), atol=1e-6)
