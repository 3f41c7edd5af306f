"""Rest patch codes beside task codes in one vocabulary: a task tokenizer carrying a rest companion."""

import numpy as np
import pytest
import torch
from tiny_configs import tiny_config

from fmrilm.brain.rest_world import RestWorldConfig, generate_rest_population
from fmrilm.brain.store import Dataset
from fmrilm.config import load_config
from fmrilm.corpus.inputs import open_inputs
from fmrilm.errors import InputError
from fmrilm.evaluation.regression import r2_score
from fmrilm.evaluation.temporal_baselines import PatchAR
from fmrilm.tokenizer.config import QuantizerConfig, TokenizerConfig
from fmrilm.tokenizer.data import all_scans, rest_windows, tokenizer_for_dataset
from fmrilm.tokenizer.model import BrainTokenizer
from fmrilm.tokenizer.tokens import write_tokens_dataset

K_TASK, K_REST, W = 32, 24, 8


def _config(kind: str, codebook_size: int, **extra) -> TokenizerConfig:
    quantizer = QuantizerConfig(codebook_size=codebook_size, kmeans_init=False, **extra.pop("quantizer", {}))
    return TokenizerConfig(input=kind, window=W, hidden_dim=8, code_dim=extra.pop("code_dim", 8),
                           contrastive="none", quantizer=quantizer)


@pytest.fixture(scope="module")
def rest_world(tmp_path_factory):
    cfg = load_config(RestWorldConfig, tiny_config("rest_world_tiny"))
    return generate_rest_population(cfg, tmp_path_factory.mktemp("rest") / "world")


@pytest.fixture(scope="module")
def paired(tmp_path_factory, tiny_task_world, rest_world):
    """A saved task tokenizer (K 32) carrying a rest companion (K 24, 8-TR patches), and its directory."""
    torch.manual_seed(0)
    task = tokenizer_for_dataset(_config("task", K_TASK), tiny_task_world)
    task.attach_rest(tokenizer_for_dataset(_config("rest", K_REST), rest_world))
    out = task.save_pretrained(tmp_path_factory.mktemp("tok") / "paired")
    return BrainTokenizer.from_pretrained(out), out


def test_the_companion_round_trips_under_one_fingerprint_and_one_code_table(paired, rest_world):
    loaded, out = paired
    assert loaded.rest is not None and loaded.total_vocab_size == K_TASK + K_REST
    assert loaded.code_embeddings().shape == (K_TASK + K_REST, 8)
    assert loaded.describe()["rest"]["offset"] == K_TASK and loaded.describe()["vocab_size"] == K_TASK + K_REST
    # the rest weights are in model.safetensors: changing them changes what the fingerprint checks
    assert any(k.startswith("rest.") for k in loaded.state_dict())
    patches = all_scans(rest_world, loaded.rest).batch(np.arange(6))["x"]
    ids, _ = loaded.encode_rest(patches)
    assert int(ids.min()) >= K_TASK and int(ids.max()) < K_TASK + K_REST
    assert torch.allclose(loaded.decode_rest(ids), loaded.rest.reconstruct(patches))


def test_expected_patches_average_each_parcels_decoded_codes(paired, rest_world):
    tokenizer, _ = paired
    patches = all_scans(rest_world, tokenizer.rest).batch(np.arange(3))["x"]
    ids, _ = tokenizer.encode_rest(patches)
    codes = (ids - K_TASK).long()
    one_hot = torch.nn.functional.one_hot(codes, K_REST).float()  # certain: the decoded codes themselves
    assert torch.allclose(tokenizer.expected_rest_patches(one_hot), tokenizer.decode_rest(ids), atol=1e-6)
    # half on each of two codes: the mean of the two decodings, parcel by parcel
    other = (codes + 1) % K_REST
    mixed = 0.5 * one_hot + 0.5 * torch.nn.functional.one_hot(other, K_REST).float()
    halfway = 0.5 * (tokenizer.decode_rest(ids) + tokenizer.decode_rest(other + K_TASK))
    assert torch.allclose(tokenizer.expected_rest_patches(mixed), halfway, atol=1e-6)
    with pytest.raises(InputError, match="shape"):
        tokenizer.expected_rest_patches(one_hot[:, :, :-1])


def test_rest_data_is_tokenized_in_patches_after_the_task_codes(paired, rest_world, tiny_task_world, tmp_path):
    tokenizer, out = paired
    tokens = write_tokens_dataset(tokenizer, rest_world, tmp_path / "rest_tokens", tokenizer_dir=str(out))
    ds = Dataset(tokens, kind="tokens")
    n_subjects, n_trs, n_parcels = Dataset(rest_world).manifest["arrays"]["timeseries"]["shape"]
    array = ds.array("tokens")
    assert array.shape == (n_subjects, n_trs // W, n_parcels)  # P × (T / W) tokens per run
    assert ds.manifest["rest_input"] == "patch" and ds.manifest["window"] == W
    assert array.min() >= K_TASK and array.max() < K_TASK + K_REST
    task_tokens = write_tokens_dataset(tokenizer, tiny_task_world, tmp_path / "task_tokens", tokenizer_dir=str(out))
    assert np.asarray(Dataset(task_tokens, kind="tokens").array("tokens")).max() < K_TASK
    # one corpus reads both: the same tokenizer identity, ids checked against the whole vocabulary
    inputs = open_inputs(tiny_task_world, task_tokens, rest_world, tokens)
    assert inputs.tokenizer["vocab_size"] == K_TASK + K_REST


@pytest.mark.parametrize("change, field", [({"code_dim": 4}, "code_dim"),
                                           ({"quantizer": {"kind": "rvq", "levels": 2}}, "levels")])
def test_a_companion_that_cannot_share_the_vocabulary_is_refused(tiny_task_world, rest_world, change, field):
    task = tokenizer_for_dataset(_config("task", K_TASK), tiny_task_world)
    rest = tokenizer_for_dataset(_config("rest", K_REST, **change), rest_world)
    with pytest.raises(InputError, match=field):
        task.attach_rest(rest)
    with pytest.raises(InputError, match="rest companion"):
        task.attach_rest(tokenizer_for_dataset(_config("task", K_REST), tiny_task_world))


def test_patch_ar_recovers_a_planted_patch_map_and_beats_persistence():
    rng = np.random.default_rng(0)
    n_subjects, n_patches, p = 40, 30, 5
    maps = rng.normal(scale=0.25, size=(p, W, W))
    windows = np.zeros((n_subjects, n_patches, p, W))
    windows[:, 0] = rng.normal(size=(n_subjects, p, W))
    for j in range(1, n_patches):
        windows[:, j] = np.einsum("spk,pkw->spw", windows[:, j - 1], maps) + rng.normal(size=(n_subjects, p, W))
    ar = PatchAR(order=1).fit(windows[:32])
    assert np.allclose(ar.coef, maps, atol=0.15)
    test = windows[32:]
    previous, targets = test[:, :-1].reshape(-1, p, W), test[:, 1:].reshape(-1, p, W)
    assert r2_score(targets, ar.predict(previous[:, None])) > r2_score(targets, previous) + 0.1
    # one map for every parcel, from a single short run: the pooled fit stays near the planted map's mean
    shared, one_run = maps[0], np.zeros((1, 120, p, W))
    one_run[0, 0] = rng.normal(size=(p, W))
    for j in range(1, 120):
        one_run[0, j] = one_run[0, j - 1] @ shared + rng.normal(size=(p, W))
    pooled = PatchAR(order=1, pooled=True).fit(one_run)
    assert np.allclose(pooled.coef, pooled.coef[:1]) and np.abs(pooled.coef[0] - shared).max() < 0.2
    with pytest.raises(InputError, match="n_patches"):
        PatchAR(order=2).fit(windows[:, :2])


def test_rest_windows_are_what_the_companion_decodes_against(rest_world):
    # the evaluation's targets are rest_windows of the run: the same z-scored patches the tokenizer read
    series = np.asarray(Dataset(rest_world).array("timeseries"))
    windows = rest_windows(series, W)
    rest = tokenizer_for_dataset(_config("rest", K_REST), rest_world)
    scans = all_scans(rest_world, rest)
    assert np.allclose(scans.batch(np.arange(3))["x"].numpy(), windows.reshape(-1, *windows.shape[2:])[:3])
