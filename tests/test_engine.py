"""The shared DeepSpeed engine: schedule, resume equality, safe resume, and 2 CPU ranks under the launcher."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fmrilm.engine import (
    CHECKSUMS,
    EngineConfig,
    TrainEngine,
    cosine_with_warmup,
    load_deepspeed_json,
)
from fmrilm.errors import InputError
from fmrilm.seeds import micro_batch_positions, visited_positions


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


CFG = EngineConfig(max_steps=12, warmup_steps=2, lr=5e-2, micro_batch_size=5, log_every=0, keep_checkpoints=3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run with checkpoints at steps 3 and 6 (copied per test), and the losses of steps 4..12."""
    root = tmp_path_factory.mktemp("saved")
    engine = TrainEngine(Regressor(), CFG, root / "run")
    run(engine, 1, 3)
    engine.save_checkpoint(3)
    losses = run(engine, 4, 6)
    engine.save_checkpoint(6)
    return root / "run", losses + run(engine, 7, 12)


def copy_of(saved, tmp_path):
    shutil.copytree(saved[0], tmp_path / "run")
    return tmp_path / "run"


def test_checkpoints_carry_a_sha256_sidecar_and_resume_says_where_it_starts(saved, tmp_path, capsys):
    from fmrilm.io import sha256_file

    run_dir = copy_of(saved, tmp_path)
    step_dir = run_dir / "checkpoints" / "step-000006"
    digests = json.loads((step_dir / CHECKSUMS).read_text())
    assert {p.name for p in step_dir.iterdir()} == {*digests, CHECKSUMS}
    assert "mp_rank_00_model_states.pt" in digests
    assert all(sha256_file(step_dir / name) == digest for name, digest in digests.items())
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-000006"

    engine = TrainEngine(Regressor(), CFG, run_dir)
    assert engine.load_checkpoint()[0] == 6
    assert f"resuming from step 6 (checkpoint {step_dir})" in capsys.readouterr().out
    (row,) = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert row == {"event": "resumed", "step": 6, "checkpoint": str(step_dir)}
    assert run(engine, 7, 12) == pytest.approx(saved[1][3:], rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("damage", ["flip a byte", "drop the sidecar", "add a file"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(saved, tmp_path, damage):
    run_dir = copy_of(saved, tmp_path)
    step_dir = run_dir / "checkpoints" / "step-000006"
    if damage == "flip a byte":
        data = bytearray((step_dir / "mp_rank_00_model_states.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (step_dir / "mp_rank_00_model_states.pt").write_bytes(bytes(data))
    elif damage == "drop the sidecar":
        (step_dir / CHECKSUMS).unlink()
    else:
        (step_dir / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"")
    engine = TrainEngine(Regressor(), CFG, run_dir)
    with pytest.warns(RuntimeWarning, match="checkpoint step-000006 refused"):
        step, _ = engine.load_checkpoint()
    assert step == 3
    assert run(engine, 4, 12) == pytest.approx(saved[1], rel=1e-6, abs=1e-7)


def test_resume_refuses_when_no_checkpoint_is_intact_naming_the_file(saved, tmp_path):
    run_dir = copy_of(saved, tmp_path)
    shutil.rmtree(run_dir / "checkpoints" / "step-000003")
    model_file = run_dir / "checkpoints" / "step-000006" / "mp_rank_00_model_states.pt"
    model_file.write_bytes(model_file.read_bytes()[:-10])  # truncated
    engine = TrainEngine(Regressor(), CFG, run_dir)
    with pytest.warns(RuntimeWarning), pytest.raises(InputError, match=r"mp_rank_00_model_states\.pt.*sha256"):
        engine.load_checkpoint()


class RunsCode:
    """Unpickling this calls os.makedirs(marker): what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_a_crafted_checkpoint_with_a_matching_sidecar_is_never_unpickled(saved, tmp_path):
    from fmrilm.engine import write_checksums

    run_dir = copy_of(saved, tmp_path)
    step_dir = run_dir / "checkpoints" / "step-000006"
    marker = tmp_path / "code-ran"
    torch.save({"module": RunsCode(str(marker))}, step_dir / "mp_rank_00_model_states.pt")
    (step_dir / CHECKSUMS).unlink()
    write_checksums(step_dir)  # the attacker rewrote the sidecar too
    engine = TrainEngine(Regressor(), CFG, run_dir)
    with pytest.raises(InputError, match="weights-only"):
        engine.load_checkpoint()
    assert not marker.exists()


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
        cfg = EngineConfig(max_steps=8, warmup_steps=1, lr=1e-2, micro_batch_size=5, log_every=4)
        eng = TrainEngine(Regressor(), cfg, {str(tmp_path / 'run')!r})
        for s in range(1, 9):
            eng.log(s, eng.train_step(batch_for(s * 2 + eng.rank)))
        eng.save_checkpoint(8)
        w = next(eng.module.parameters()).detach().clone()
        gathered = [torch.zeros_like(w) for _ in range(eng.world_size)]
        torch.distributed.all_gather(gathered, w)
        # every rank resumes from the step the main rank verified
        resumed = TrainEngine(Regressor(), cfg, {str(tmp_path / 'run')!r})
        step = resumed.load_checkpoint()[0]
        steps = [None] * eng.world_size
        torch.distributed.all_gather_object(steps, step)
        same_weights = torch.equal(next(resumed.module.parameters()).detach(), w)
        if eng.is_main:
            print("RESULT", json.dumps({{"world": eng.world_size, "same": all(torch.equal(g, w) for g in gathered),
                                        "resumed": steps, "same_weights": same_weights}}))
        resumed.cleanup()
    """))
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    proc = subprocess.run([launcher, "--num_gpus", "2", "--master_port", "29531", str(script)],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[0].split(" ", 1)[1])
    assert result == {"world": 2, "same": True, "resumed": [8, 8], "same_weights": True}  # ZeRO-2: identical replicas
    assert proc.stdout.count("resuming from step 8") == 1  # printed by the main rank only
    log = [json.loads(l) for l in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [4, 8, 8] and log[-1]["event"] == "resumed"
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
