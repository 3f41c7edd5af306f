"""A few stage-1 steps under the `deepspeed` launcher with 2 CPU ranks: codebooks stay in sync."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_configs import tiny_config

from fmrilm.brain.rest_world import RestWorldConfig, generate_rest_population
from fmrilm.brain.splits import SplitsConfig, write_run_splits
from fmrilm.config import load_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_cpu_ranks_train_with_synced_codebook(tmp_path):
    data = generate_rest_population(load_config(RestWorldConfig, tiny_config("rest_world_tiny")), tmp_path / "rest")
    splits = write_run_splits(SplitsConfig(rest_dataset=str(data), out=str(tmp_path / "splits.json")))
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, DS_ACCELERATOR="cpu", PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS="1")
    cmd = [str(bin_dir / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "--module",
           "fmrilm.stages.tokenizer", "--config", tiny_config("tokenizer_tiny"),
           "--set", f"data.dataset={data}", f"data.splits={splits}", f"out_dir={tmp_path / 'out'}",
           "engine.max_steps=4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=850)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (artifact,) = [p for p in (tmp_path / "out").iterdir() if p.name.startswith("tokenizer_")]
    report = json.loads((artifact / "eval.json").read_text())
    assert report["world_size"] == 2
    assert report["codebook_rank_spread"] == 0.0  # both ranks hold the same codebook after training
    log_file = tmp_path / "out" / "train" / "train_log.jsonl"
    log = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [row["step"] for row in log] == [2, 4]
    assert all(0 < row["usage"] <= 1 and row["codebook_rank_spread"] == 0.0 for row in log)
