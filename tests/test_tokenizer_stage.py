"""Stage 1 end to end in one process: train on task data, then `fmrilm tokenizer encode | inspect`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tiny_configs import tiny_config

import fmrilm.cli
from fmrilm.brain.atlas import Atlas
from fmrilm.brain.splits import SplitsConfig, read_splits, write_run_splits
from fmrilm.brain.store import Dataset, DatasetWriter
from fmrilm.errors import InputError
from fmrilm.seeds import micro_batch_positions
from fmrilm.stages.tokenizer import TokenizerDataConfig, TokenizerStageConfig, run
from fmrilm.tokenizer.model import BrainTokenizer

N_STIMULI, N_TRIALS = 12, 60


def write_task_dataset(path, atlas_info, seed=0):
    """A small task dataset in the shared layout: low-rank betas over Schaefer-100 vertices."""
    rng = np.random.default_rng(seed)
    atlas = Atlas.schaefer(100)
    stimulus = np.arange(N_TRIALS) % N_STIMULI
    pattern = rng.normal(size=(N_STIMULI, 4)) @ rng.normal(size=(4, atlas.n_vertices))
    betas = (pattern[stimulus] + 0.3 * rng.normal(size=(N_TRIALS, atlas.n_vertices))).astype(np.float32)
    stimuli = [{"stimulus": m, "key": f"stim-{m:06d}", "captions": [f"a photo of object number {m}"] * 2,
                "qa": [], "categories": [], "supercategories": [], "novel": False, "graph": {}}
               for m in range(N_STIMULI)]
    with DatasetWriter(path, "task", atlas_info, {"test": True}, seed=seed) as w:
        w.write_array("betas", betas)
        w.write_array("trial_stimulus", stimulus.astype(np.int32))
        w.write_array("trial_subject", np.zeros(N_TRIALS, np.int16))
        w.write_array("trial_session", np.zeros(N_TRIALS, np.int16))
        w.write_array("trial_repeat", (np.arange(N_TRIALS) // N_STIMULI).astype(np.int8))
        w.write_table("stimuli", stimuli)
        w.write_table("subjects", [{"subject": "sub-01"}])
        return w.finish(n_stimuli=N_STIMULI, n_subjects=1, novel_categories=[], source="synthetic")


def cli(argv) -> int:
    """`fmrilm ...` in-process, with the tokenizer commands registered even before cli.py lists them."""
    modules = fmrilm.cli.COMMAND_MODULES
    if "fmrilm.tokenizer.commands" not in modules:
        fmrilm.cli.COMMAND_MODULES = (*modules, "fmrilm.tokenizer.commands")
    try:
        return fmrilm.cli.main(argv)
    finally:
        fmrilm.cli.COMMAND_MODULES = modules


def test_tokenizer_train_verb_runs_stage_1_in_this_process():
    """`fmrilm tokenizer train` is wired by the stages' command module (the tokenizer package sits below it)."""
    from fmrilm.stages import commands

    args = fmrilm.cli.build_parser().parse_args(["tokenizer", "train", "--config", "tokenizer_tiny", "--set", "a=1"])
    assert args.handler is commands._train_tokenizer and (args.config, args.set) == ("tokenizer_tiny", ["a=1"])
    assert fmrilm.cli.build_parser().parse_args(["tokenizer", "train"]).config == "tokenizer_demo"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage")
    data = write_task_dataset(root / "task", Atlas.schaefer(100).describe())
    splits = write_run_splits(SplitsConfig(task_dataset=str(data), out=str(root / "splits.json"), val_fraction=0.25))
    # Its own process, exactly as launched by hand (DeepSpeed keeps process-wide group state).
    cmd = [sys.executable, "-m", "fmrilm.stages.tokenizer", "--config", tiny_config("tokenizer_tiny"), "--set",
           f"data.dataset={data}", f"out_dir={root / 'out'}", "tokenizer.input=task",
           "tokenizer.contrastive=clip", f"data.splits={splits}", "engine.max_steps=4", "engine.micro_batch_size=8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, DS_ACCELERATOR="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = (root / "out").glob("tokenizer_*")
    return root, data, out


def test_stage_writes_named_artifact_and_logs_health(trained):
    root, _, out = trained
    assert out.name == "tokenizer_schaefer100_fsaverage5_vq_K64_L1_task_synthetic"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "eval.json", "stage_config.yaml"} <= names
    log = [json.loads(line) for line in (root / "out" / "train" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [2, 4]
    for row in log:
        assert 0 < row["usage"] <= 1 and 0 < row["perplexity_ratio"] <= 1 and row["dead_codes"] >= 0
        assert row["contrast"] > 0 and row["codebook_rank_spread"] == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["n_scans"] > 0 and len(report["r2_per_parcel"]) == 100 and 0 < report["usage"] <= 1
    assert (root / "out" / "train" / "checkpoints" / "latest").is_file()


def test_artifact_records_the_splits_and_trains_on_train_stimuli_only(trained):
    root, data, out = trained
    splits = read_splits(root / "splits.json")
    provenance = json.loads((out / "config.json").read_text())["provenance"]
    assert provenance["splits"]["sha256"] == splits.sha256
    train = {k for k, split in splits.stimuli.items() if split == "train"}
    assert provenance["train_stimuli"] and set(provenance["train_stimuli"]) == train
    keys = [r["key"] for r in Dataset(data).table("stimuli")]
    held = json.loads((out / "eval.json").read_text())
    assert held["n_scans"] > 0 and len(train) < len(keys)  # held-out figures come from val stimuli


def test_stage_without_a_splits_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="data.splits"):
        run(TokenizerStageConfig(out_dir=str(tmp_path), data=TokenizerDataConfig(dataset=str(tmp_path))))


def test_encode_cli_writes_tokens_dataset(trained, tmp_path):
    _, data, out = trained
    assert cli(["tokenizer", "encode", "--tokenizer", str(out), "--data", str(data),
                "--out", str(tmp_path / "tok")]) == 0
    tokens_ds = Dataset(tmp_path / "tok", kind="tokens")
    tokens = tokens_ds.array("tokens")
    assert tokens.shape == (N_TRIALS, 100) and tokens.dtype == np.int16
    info = tokens_ds.manifest["tokenizer"]
    assert (info["codebook_size"], info["levels"], info["atlas"]["name"]) == (64, 1, "schaefer100_fsaverage5")
    assert tokens_ds.manifest["source_kind"] == "task"
    assert tokens_ds.manifest["source_dataset"] == str(data.resolve())
    tokenizer = BrainTokenizer.from_pretrained(out)
    assert info["fingerprint"] == tokenizer.fingerprint
    expected = tokenizer.encode(tokenizer.group_vertices(Dataset(data).array("betas")[:5]))
    assert np.array_equal(tokens[:5], expected.numpy())


def test_encode_refuses_dataset_of_another_atlas(trained, tmp_path, capsys):
    _, _, out = trained
    info = dict(Atlas.schaefer(100).describe(), fingerprint="0" * 16)
    other = write_task_dataset(tmp_path / "other", info)
    assert cli(["tokenizer", "encode", "--tokenizer", str(out), "--data", str(other),
                "--out", str(tmp_path / "t")]) == 2
    assert "atlas.fingerprint" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_inspect_cli_prints_health_and_saves_surface_map(trained, tmp_path, capsys):
    _, data, out = trained
    png = tmp_path / "r2.png"
    assert cli(["tokenizer", "inspect", "--tokenizer", str(out), "--data", str(data), "--out", str(png)]) == 0
    text = capsys.readouterr().out
    assert "codebook usage" in text and "perplexity" in text and "dead codes" in text
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_missing_dataset_is_refused():
    with pytest.raises(InputError, match="data.dataset"):
        run(TokenizerStageConfig())


def test_micro_batches_split_the_global_batch_between_ranks():
    parts = [micro_batch_positions(50, step=3, micro=4, rank=r, world=2, seed=1) for r in (0, 1)]
    assert len(set(parts[0]) | set(parts[1])) == 8
    assert np.array_equal(parts[0], micro_batch_positions(50, step=3, micro=4, rank=0, world=2, seed=1))
