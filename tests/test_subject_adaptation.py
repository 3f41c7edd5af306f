"""Held-out-subject adaptation: only the encoders move, more scans help, the subject stays unseen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_configs import tiny_config

from fmrilm.errors import InputError
from fmrilm.tokenizer.adapt import AdaptConfig, adapt_subject_encoders, frozen_state
from fmrilm.tokenizer.config import QuantizerConfig, TokenizerConfig
from fmrilm.tokenizer.evaluate import R2Accumulator
from fmrilm.tokenizer.model import BrainTokenizer

P, W, LATENT = 6, 10, 3  # parcels, inputs per parcel, latent factors per parcel


def _subject(seed: int, n: int, mixing: np.ndarray) -> np.ndarray:
    """Scans [n, P, W]: per-parcel low-rank signals through the subject's own mixing [P, LATENT, W]."""
    latent = np.random.default_rng(seed).standard_normal((n, P, LATENT)).astype(np.float32)
    return np.einsum("npl,plw->npw", latent, mixing).astype(np.float32)


@pytest.fixture(scope="module")
def planted():
    """A small tokenizer trained on subject A, and subject B whose parcels mix the latents differently."""
    rng = np.random.default_rng(0)
    mix_a = rng.standard_normal((P, LATENT, W)).astype(np.float32)
    # B keeps A's patterns on shuffled inputs: the same information, a different layout.
    mix_b = mix_a[:, :, rng.permutation(W)] + 0.3 * rng.standard_normal((P, LATENT, W)).astype(np.float32)
    cfg = TokenizerConfig(input="rest", window=W, hidden_dim=32, code_dim=8, contrastive="clip",
                          quantizer=QuantizerConfig(codebook_size=64, codebook_dim=None, kmeans_init=True))
    info = {"name": "toy", "n_parcels": P, "n_vertices": P * W, "fingerprint": "toy"}
    torch.manual_seed(0)
    tokenizer = BrainTokenizer(cfg, info, np.ones((P, W), bool))
    x = torch.from_numpy(_subject(1, 512, mix_a))
    opt = torch.optim.Adam(tokenizer.parameters(), lr=3e-3)
    tokenizer.train()
    for step in range(200):
        loss = tokenizer(x[(step * 64) % 512:][:64])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tokenizer.eval(), _subject(2, 64, mix_b), _subject(3, 128, mix_b)


def _r2(tokenizer, scans) -> float:
    x = torch.from_numpy(scans)
    acc = R2Accumulator(tokenizer.mask)
    acc.update(tokenizer.reconstruct(x), x)
    return acc.result()[0]


def test_adaptation_changes_only_the_encoders(planted):
    tokenizer, train_b, _ = planted
    before_frozen = frozen_state(tokenizer)
    before_encoder = {k: v.clone() for k, v in tokenizer.encoder.state_dict().items()}
    text = np.random.default_rng(4).standard_normal((len(train_b), 384)).astype(np.float32)
    adapted = adapt_subject_encoders(tokenizer, train_b, 16, text, AdaptConfig(steps=20, batch_size=8))
    after = frozen_state(adapted)
    assert before_frozen.keys() == after.keys() and any("codebook" in k or "_codebook" in k for k in after)
    for name, value in before_frozen.items():  # codebook, EMA statistics, decoder, read-out: bit-identical
        assert torch.equal(value, after[name]), name
    assert any(not torch.equal(v, adapted.encoder.state_dict()[k]) for k, v in before_encoder.items())
    # the shared tokenizer itself is untouched, and the copy is ready for inference
    assert all(torch.equal(v, tokenizer.encoder.state_dict()[k]) for k, v in before_encoder.items())
    assert not adapted.training and adapted.fingerprint is None
    assert all(p.requires_grad for p in tokenizer.parameters())


def test_more_scans_do_not_hurt_reconstruction(planted):
    tokenizer, train_b, test_b = planted
    cfg = AdaptConfig(steps=150, batch_size=16, lr=3e-3, anchor_weight=1.0)
    r2 = {0: _r2(tokenizer, test_b)}
    for k in (4, 64):
        r2[k] = _r2(adapt_subject_encoders(tokenizer, train_b, k, None, cfg), test_b)
    assert r2[64] > r2[0] + 0.05, r2  # the new layout is learnt
    assert r2[64] >= r2[4] - 0.01, r2  # and more scans do not make it worse


def test_bad_input_is_refused(planted):
    tokenizer, train_b, _ = planted
    with pytest.raises(InputError, match="k"):
        adapt_subject_encoders(tokenizer, train_b, len(train_b) + 1)
    with pytest.raises(InputError, match="k"):
        adapt_subject_encoders(tokenizer, train_b, 0)
    with pytest.raises(InputError, match="shape"):
        adapt_subject_encoders(tokenizer, train_b[:, :, :-1], 4)
    with pytest.raises(InputError, match="text"):
        adapt_subject_encoders(tokenizer, train_b, 4, np.zeros((4, 5), np.float32))
    nan = train_b.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        adapt_subject_encoders(tokenizer, nan, 4)
    with pytest.raises(InputError, match="steps"):
        adapt_subject_encoders(tokenizer, train_b, 4, cfg=AdaptConfig(steps=0))


def test_heldout_subject_is_unseen_by_the_tokenizer(tiny_task_world, tmp_path):
    from fmrilm.brain.splits import SplitsConfig, decide_splits, read_splits, write_splits
    from fmrilm.brain.store import Dataset
    from fmrilm.evaluation.subject_adaptation import check_ks, heldout_subject
    from fmrilm.tokenizer.data import load_splits, tokenizer_for_dataset, training_record

    ds = Dataset(tiny_task_world)
    subjects = np.asarray(ds.array("trial_subject"))
    n_subjects = len(ds.table("subjects"))
    tokenizer = tokenizer_for_dataset(TokenizerConfig(contrastive="none"), tiny_task_world)
    splits = read_splits(write_splits(decide_splits(SplitsConfig(task_dataset=str(tiny_task_world),
                                                                 heldout_task_subjects=1)), tmp_path / "s.json"))
    train, heldout = load_splits(tiny_task_world, tokenizer, splits, with_text=False)
    last = n_subjects - 1
    assert last not in set(subjects[train.rows]) | set(subjects[heldout.rows])
    assert set(subjects[train.rows]) == set(range(last))
    stim = np.asarray(ds.array("trial_stimulus"))
    assert set(stim[heldout.rows]) == set(splits.stimulus_indices(ds, "val"))  # held-out figures on val
    assert not set(stim[train.rows]) & set(splits.stimulus_indices(ds, "test"))
    tokenizer.provenance = training_record(tiny_task_world, splits)
    # 0 held out: every subject trains
    everyone = read_splits(write_splits(decide_splits(SplitsConfig(task_dataset=str(tiny_task_world))),
                                        tmp_path / "all.json"))
    assert set(subjects[load_splits(tiny_task_world, tokenizer, everyone, False)[0].rows]) == set(range(n_subjects))
    with pytest.raises(InputError, match="heldout_task_subjects"):
        decide_splits(SplitsConfig(task_dataset=str(tiny_task_world), heldout_task_subjects=n_subjects))

    from fmrilm.brain.task_data import TaskData

    data = TaskData(tiny_task_world)
    assert heldout_subject(data, {"task_fewshot_subjects": [f"sub-{n_subjects:02d}"]}, tokenizer)[0] == last
    index, reason = heldout_subject(data, {"task_fewshot_subjects": ["sub-01"]}, tokenizer)
    assert index is None and "trained on sub-01" in reason
    assert heldout_subject(data, {}, tokenizer)[0] is None
    with pytest.raises(InputError, match="unknown subject"):
        heldout_subject(data, {"task_fewshot_subjects": ["sub-99"]}, tokenizer)
    with pytest.raises(InputError, match="ks"):
        check_ks([8, 500], 100)
    assert check_ks([32, 8, 8], 100) == [8, 32]


def test_heldout_subject_is_absent_from_the_corpus_train_split(tmp_path, atlas):
    from fmrilm.config import load_config
    from fmrilm.corpus.build import CorpusConfig, plan_corpus
    from fmrilm.corpus.inputs import open_inputs
    from fmrilm.corpus.toy import write_toy_inputs

    paths = write_toy_inputs(tmp_path, atlas, n_stimuli=12, n_task_subjects=3, repeats=2, n_rest_subjects=6)
    cfg = load_config(CorpusConfig, tiny_config("corpus_tiny"), [f"{k}={v}" for k, v in paths.items()])
    inputs = open_inputs(cfg.task_dataset, cfg.task_tokens, cfg.rest_dataset, cfg.rest_tokens)
    plan = plan_corpus(cfg, inputs, progress=False)
    last = inputs.task.table("subjects")[-1]["subject"]
    assert plan.task_fewshot_subjects == [last]  # splits_tiny holds the last task subject out
    task = [s.meta for s in plan.samples if s.meta.get("source") == "task"]
    assert {m["split"] for m in task if m["subject"] == last} == {"fewshot"}
    assert all(m["subject"] != last for m in task if m["split"] == "train")
