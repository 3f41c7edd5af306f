"""The shared DeepSpeed engine: schedule, resume equality, and 2 CPU ranks under the launcher."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fmrilm.engine import (
    EngineConfig,
    TrainEngine,
    cosine_with_warmup,
    load_deepspeed_json,
    micro_batch_positions,
    visited_positions,
)
from fmrilm.errors import InputError


class Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, x, y):
        loss = ((self.net(x) - y) ** 2).mean()
        return {"loss": loss}


def batch_for(step: int) -> dict:
    """Data order is a pure function of the step, as in every fmrilm stage."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(5, 6, generator=g)
    return {"x": x, "y": x.sum(1, keepdim=True)}


def run(engine: TrainEngine, first: int, last: int) -> list[float]:
    return [engine.train_step(batch_for(s))["loss"] for s in range(first, last + 1)]


def test_cosine_schedule_warms_up_then_decays_to_floor():
    f = cosine_with_warmup(warmup=4, total=20, min_ratio=0.1)
    assert f(0) == pytest.approx(0.25) and f(3) == pytest.approx(1.0)
    assert f(4) == pytest.approx(1.0) and f(20) == pytest.approx(0.1) and f(50) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(4, 20))


def test_unknown_deepspeed_config_is_refused():
    with pytest.raises(InputError, match="zero2"):
        load_deepspeed_json("zero9")


def test_resume_continues_the_same_loss_curve(tmp_path):
    cfg = EngineConfig(max_steps=12, warmup_steps=2, lr=5e-2, micro_batch_size=5, log_every=0)
    straight = run(TrainEngine(Regressor(), cfg, tmp_path / "straight"), 1, 12)

    first = TrainEngine(Regressor(), cfg, tmp_path / "resumed")
    head = run(first, 1, 6)
    first.save_checkpoint(6)
    del first  # the "kill": a fresh engine and model pick up from disk
    torch.manual_seed(123)  # a different ambient RNG must not matter
    second = TrainEngine(Regressor(), cfg, tmp_path / "resumed")
    step, _ = second.load_checkpoint()
    assert step == 6 and second.global_step == 6
    tail = run(second, 7, 12)
    assert head + tail == pytest.approx(straight, rel=1e-6, abs=1e-7)
    assert sum(straight[-4:]) < sum(straight[:4])  # it learns, too


def test_deterministic_engines_ask_torch_for_deterministic_kernels(tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    try:
        TrainEngine(Regressor(), EngineConfig(deterministic=True, log_every=0), tmp_path).cleanup()
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.slow
def test_two_cpu_ranks_under_the_deepspeed_launcher(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys, json, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_engine import Regressor, batch_for
        from fmrilm.engine import EngineConfig, TrainEngine
        eng = TrainEngine(Regressor(), EngineConfig(max_steps=8, warmup_steps=1, lr=1e-2, micro_batch_size=5,
                                                    log_every=4), {str(tmp_path / 'run')!r})
        for s in range(1, 9):
            eng.log(s, eng.train_step(batch_for(s * 2 + eng.rank)))
        eng.save_checkpoint(8)
        w = next(eng.module.parameters()).detach().clone()
        gathered = [torch.zeros_like(w) for _ in range(eng.world_size)]
        torch.distributed.all_gather(gathered, w)
        if eng.is_main:
            print("RESULT", json.dumps({{"world": eng.world_size, "same": all(torch.equal(g, w) for g in gathered)}}))
        eng.cleanup()
    """))
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    proc = subprocess.run([launcher, "--num_gpus", "2", "--master_port", "29531", str(script)],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[0].split(" ", 1)[1])
    assert result == {"world": 2, "same": True}  # ZeRO-2 keeps the replicas identical
    log = [json.loads(l) for l in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [4, 8]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-000008"


def test_a_second_engine_in_the_same_process_after_cleanup(tmp_path):
    """The pipeline runs several stages in one process: cleanup must not break the next engine."""
    cfg = EngineConfig(max_steps=2, warmup_steps=1, micro_batch_size=5, log_every=0)
    first = TrainEngine(Regressor(), cfg, tmp_path / "a")
    first.train_step(batch_for(1))
    first.cleanup()
    second = TrainEngine(Regressor(), cfg, tmp_path / "b")
    assert second.train_step(batch_for(1))["loss"] > 0


def test_length_bucketing_visits_every_sample_once_per_epoch_in_tighter_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 500, size=96)
    micro, world = 4, 2  # 12 global batches per epoch

    def epoch(bucket_batches):
        return [np.concatenate([micro_batch_positions(96, step, micro, rank, world, seed=3, lengths=lengths,
                                                      bucket_batches=bucket_batches) for rank in range(world)])
                for step in range(12)]

    plain, bucketed = epoch(0), epoch(4)
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(96))
    padded = [sum(lengths[b].max() * len(b) for b in batches) for batches in (plain, bucketed)]
    assert padded[1] < 0.8 * padded[0]
    # a pure function of (seed, step): the same call gives the same batch
    assert np.array_equal(bucketed[5][:micro], micro_batch_positions(96, 5, micro, 0, world, 3, lengths, 4))


@pytest.mark.parametrize("steps,bucket_batches", [(5, 0), (7, 3), (40, 3)])
def test_visited_positions_are_exactly_what_the_micro_batches_take(steps, bucket_batches):
    """A run shorter than an epoch prepares only these samples; 40 steps span several epochs (all)."""
    lengths = np.random.default_rng(1).integers(10, 500, size=101)
    micro, world = 3, 2
    taken = {int(i) for step in range(steps) for rank in range(world)
             for i in micro_batch_positions(101, step, micro, rank, world, 5, lengths, bucket_batches)}
    visited = visited_positions(101, steps, micro, world, 5, lengths, bucket_batches).tolist()
    if steps < 101 // (micro * world):  # within the first epoch: exactly the samples taken
        assert visited == sorted(taken) and len(visited) == steps * micro * world
    else:  # a run spanning epochs prepares everything
        assert visited == list(range(101)) and taken <= set(visited)
