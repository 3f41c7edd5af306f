"""Fault-injection benchmark: SIGKILL the tiny pipeline at random points, rerun it, compare (JSON last line).

    python benchmarks/faults.py                      # ~25 min (estimate): 10 kills over the whole tiny pipeline
    python benchmarks/faults.py --quick              # ~4 min: 3 kills inside corpus … instruct
    python benchmarks/faults.py --kills 16 --seed 1  # more kill points, another draw

1. One uninterrupted run of ``fmrilm pipeline --config tests/configs/pipeline_tiny.yaml`` (as its own process, as a user
   runs it) gives the reference figures and the run's duration.
2. For each of N kill points, a fresh run directory: the pipeline starts as a subprocess in a new
   process group, the whole group gets SIGKILL at the kill point, and the same command then runs
   again to completion. Kill points are seeded: N distinct stages (while N is at most the number of
   stages), each killed at a time drawn uniformly over that stage's duration in the clean run,
   counted from its ``[pipeline] <stage>: running`` line. A training stage's loop is a small part of
   its time (setup, reading and encoding the corpus come first), so half of the draws on a training
   stage kill within 0.5 s of its first checkpoint instead (``@checkpoint`` in the table): those
   reruns must print "resuming from step N". The first stage a process runs also pays for its
   imports, and a busy machine runs slower, so a kill can land earlier in its stage than drawn; the
   stage that was really running is what is reported.
3. Per kill it records the stage that was running (the pipeline's ``[pipeline] <stage>: running``
   lines); whether there was anything to resume (a stage finished by the killed run, or a training
   checkpoint of the killed stage) and, if so, whether the rerun resumed: it recomputed none of the
   finished stages, and printed "resuming from step N" where a checkpoint was left; whether the
   rerun's figures equal the clean run's; and what is left after the rerun: ``*.partial-*`` /
   ``*.old-*`` scratch entries in the run and DeepSpeed op-build locks (``TORCH_EXTENSIONS_DIR/*/lock``).

The figures compared. Bit-identical between two uninterrupted runs on one machine (every stage is
seeded; the LM stages' data order is a pure function of (seed, step), and resume restores the RNG
state), so compared exactly: the splits file's sha256, the tokenizer's weight fingerprint, sha256
digests of the token arrays, of the corpus shards and of the stage-0 backbone weights, stage 3's
closed-question accuracy, and (full mode) the evaluation's headline targets and the stimulation's
targets. The joint and instruct weights (adapter and brain parts) are compared per tensor within
1e-4 absolute: two uninterrupted runs differ by up to ~2e-5 there (multi-threaded CPU accumulation
order, ``engine.deterministic`` off). Records holding paths or timings (``stage.json``, logs, the
reports' ``timings_s``) are not compared.

``--quick`` keeps the test of ``tests/test_benchmarks.py`` short: the pipeline stops after stage 3
(``real_rest`` … ``stimulation`` disabled), and every killed run starts from hard links of the clean
run's first stages (task_world … rest_tokens, recorded in its ``stages.json``), so its kills land in
the corpus build, the three LM stages and the retrieval stage, the stages with checkpoints and
partial exports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from fmrilm.io import read_json, sha256_file

# test-size configs live with the tests, not in the package
TEST_CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "configs"

# Two uninterrupted runs' joint / instruct weights differ by up to ~2e-5 (multi-threaded CPU
# accumulation order; engine.deterministic is off); one AdamW step at the tiny configs' lr 3e-3 moves
# a trained weight by up to about the lr, so a resume that replayed or skipped a batch stays visible.
WEIGHT_ATOL = 1e-4
# Stages with training checkpoints (``<stage>/*/checkpoints/latest``), and how soon after the first
# one a checkpoint-anchored kill lands (their training loops run for a second or two here).
TRAINING_STAGES = ("tokenizer", "backbone", "joint", "instruct")
CHECKPOINT_WINDOW_S = 0.5
QUICK_SKIPPED = ("real_rest", "real_rest_tokens", "evaluation", "stimulation")
QUICK_COPIED = ("task_world", "rest_world", "splits", "tokenizer", "task_tokens", "rest_tokens")


def pipeline_command(run: Path, quick: bool) -> list[str]:
    off = [f"stages.{s}.enabled=false" for s in QUICK_SKIPPED] if quick else []
    return [sys.executable, "-m", "fmrilm.cli", "pipeline", "--config", str(TEST_CONFIGS / "pipeline_tiny.yaml"),
            "--set", f"run_dir={run}", *off]


def launch(run: Path, quick: bool, log: Path) -> subprocess.Popen:
    """The pipeline as its own process group (so one killpg reaches every process it started)."""
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    with open(log, "w") as fh:
        return subprocess.Popen(pipeline_command(run, quick), stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def run_to_end(run: Path, quick: bool, log: Path) -> tuple[int, float]:
    t0 = time.time()
    proc = launch(run, quick, log)
    return proc.wait(), time.time() - t0


def digest(paths) -> str:
    """sha256 over the contents of `paths` (sorted by name): one figure for a set of binary files."""
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(path.name.encode() + sha256_file(path).encode())
    return h.hexdigest()[:16]


def figures(run: Path) -> dict:
    """The deterministic outputs of a finished run (see the module docstring), by name."""
    from fmrilm.pipeline import read_state

    state = {k: Path(v) for k, v in read_state(run).items()}
    out = {"splits": sha256_file(state["splits"])[:16],
           "tokenizer": read_json(state["tokenizer"] / "config.json")["fingerprint"]}
    for tokens in ("task_tokens", "rest_tokens", "real_rest_tokens"):
        if tokens in state:
            out[tokens] = digest(state[tokens].rglob("*.npy"))
    out["corpus"] = digest(state["corpus"].glob("*.tar"))
    out["backbone"] = digest(state["backbone"].glob("*.safetensors"))
    for stage in ("joint", "instruct"):
        out[stage] = {f"{path.name}:{k}": v.numpy() for path in sorted([*state[stage].glob("*.safetensors"),
                                                                          *state[stage].glob("adapter/*.safetensors")])
                      for k, v in load_file(path).items()}
    out["instruct_accuracy"] = read_json(state["instruct"] / "eval.json").get("accuracy")
    if "evaluation" in state:
        report = read_json(state["evaluation"] / "report.json")
        out["evaluation"] = {k: t["measured"] for k, t in report["targets"].items()}
    if "stimulation" in state:
        targets = read_json(state["stimulation"] / "stimulation.json")["targets"]
        out["stimulation"] = {k: t.get("measured") if isinstance(t, dict) else t for k, t in targets.items()}
    return out


def same(found, reference) -> bool:
    """Equal figures: tensors (joint, instruct) within :data:`WEIGHT_ATOL`, everything else exactly."""
    if isinstance(reference, dict) and reference and all(isinstance(v, np.ndarray) for v in reference.values()):
        return isinstance(found, dict) and found.keys() == reference.keys() and all(
            found[k].shape == v.shape and np.allclose(found[k], v, rtol=0.0, atol=WEIGHT_ATOL)
            for k, v in reference.items())
    return found == reference


def stage_at_kill(log_text: str) -> str:
    """The stage the pipeline was in: the last one it started and had not finished ("startup" before any)."""
    running = "startup"
    for line in log_text.splitlines():
        if line.startswith("[pipeline] ") and line.endswith(": running"):
            running = line[len("[pipeline] "):-len(": running")]
        elif line.startswith(f"[pipeline] {running}: done"):
            running = "between stages"
    return running


def leftovers(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*")
                  if ".partial-" in p.name or ".old-" in p.name)


def op_build_locks() -> list[str]:
    from fmrilm.device import extensions_dir

    root = extensions_dir()
    return sorted(str(p) for p in {*root.glob("*/lock"), *root.glob("*/*/lock")})


def seed_early_stages(clean: Path, run: Path) -> None:
    """`run` holding hard links of the clean run's first stages, recorded as finished (quick mode)."""
    run.mkdir(parents=True)
    recorded = read_json(clean / "stages.json")
    for stage in QUICK_COPIED:
        top = Path(recorded[stage]).parts[0]
        shutil.copytree(clean / top, run / top, copy_function=os.link)
    (run / "stages.json").write_text(json.dumps({s: recorded[s] for s in QUICK_COPIED}))


def kill_and_rerun(i: int, target: str, anchor: str, at_s: float, root: Path, clean: Path, quick: bool,
                   reference: dict) -> dict:
    run = root / f"kill-{i}"
    if quick:
        seed_early_stages(clean, run)
    finished_before = set(read_json(run / "stages.json")) if (run / "stages.json").is_file() else set()
    log = root / f"kill-{i}.log"
    proc = launch(run, quick, log)
    started = (lambda: any((run / target).glob("*/checkpoints/latest"))) if anchor == "checkpoint" else \
        (lambda: f"[pipeline] {target}: running" in log.read_text())
    while proc.poll() is None and not started():
        time.sleep(0.02)
    try:
        proc.wait(timeout=at_s)
        killed = False  # finished before its kill time
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = True
    stage = stage_at_kill((root / f"kill-{i}.log").read_text()) if killed else "none (finished)"
    at_kill = set(read_json(run / "stages.json")) if (run / "stages.json").is_file() else set()
    # a training stage killed after its first checkpoint must resume from it
    checkpointed = (run / stage).is_dir() and any((run / stage).glob("*/checkpoints/latest"))
    rc, rerun_s = run_to_end(run, quick, root / f"rerun-{i}.log")
    text = (root / f"rerun-{i}.log").read_text()
    # "already finished": killed after the export was written, before stages.json recorded it
    from_step = "resuming from step" in text or "is already finished; nothing to do" in text
    recomputed = sorted(s for s in at_kill if f"[pipeline] {s}: running" in text)
    resumable = bool(at_kill - finished_before) or checkpointed
    equal = False
    if rc == 0:
        found = figures(run)
        differ = sorted(k for k in reference if not same(found.get(k), reference[k]))
        equal = not differ
    else:
        differ = [f"rerun exit {rc}: {text.strip().splitlines()[-1] if text.strip() else ''}"]
    return {"kill": i, "target": f"{target}@{anchor}", "at_s": round(at_s, 1), "stage": stage,
            "finished_at_kill": sorted(at_kill - finished_before), "resumable": resumable, "from_step": from_step,
            "resumed": resumable and not recomputed and (from_step or not checkpointed),
            "recomputed_finished": recomputed, "rerun_rc": rc, "rerun_s": round(rerun_s, 1),
            "figures_equal": equal, "differ": differ, "leftovers": leftovers(run)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 kills inside corpus … instruct (~4 min)")
    parser.add_argument("--kills", type=int, default=None, help="kill points (default: 10, 3 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the run directories (printed at the end)")
    args = parser.parse_args()
    n_kills = args.kills if args.kills is not None else (3 if args.quick else 10)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    t_start = time.time()
    root = Path(tempfile.mkdtemp(prefix="fmrilm-faults-"))
    clean = root / "clean"
    rc, clean_s = run_to_end(clean, args.quick, root / "clean.log")
    if rc != 0:
        sys.exit(f"the clean run failed (exit {rc}); see {root / 'clean.log'}")
    reference = figures(clean)
    # kill points: distinct stages (while there are enough), each at a uniform time into its clean
    # duration, or (half of a training stage's draws) just after its first checkpoint
    timings = {k: t for k, t in read_json(clean / "pipeline_report.json")["timings_s"].items()
               if not (args.quick and k in QUICK_COPIED)}
    rng = np.random.default_rng(args.seed)
    order = list(timings)
    points = []
    for k in sorted(rng.choice(len(order), n_kills, replace=n_kills > len(order))):
        stage, after_checkpoint = order[k], rng.random() < 0.5
        if stage in TRAINING_STAGES and after_checkpoint:
            points.append((stage, "checkpoint", float(rng.uniform(0.0, CHECKPOINT_WINDOW_S))))
        else:
            points.append((stage, "start", float(rng.uniform(0.0, timings[stage]))))
    rows = [kill_and_rerun(i, *point, root, clean, args.quick, reference) for i, point in enumerate(points)]
    locks = op_build_locks()

    print(f"clean run: {clean_s:.0f} s; {n_kills} kills (seed {args.seed}); 'at': seconds after the target stage "
          f"started (@start) or wrote its first checkpoint (@checkpoint)")
    print(f"{'kill':>4} {'target':<22} {'at s':>5} {'stage killed':<16} {'resumable':<9} {'resumed':<8} "
          f"{'from step':<9} {'recomputed':<10} {'rerun s':>7} {'equal':<6} leftovers")
    for r in rows:
        print(f"{r['kill']:>4} {r['target']:<22} {r['at_s']:>5.1f} {r['stage']:<16} {str(r['resumable']):<9} "
              f"{str(r['resumed']):<8} {str(r['from_step']):<9} {len(r['recomputed_finished']):<10} "
              f"{r['rerun_s']:>7.1f} {str(r['figures_equal']):<6} {len(r['leftovers'])}"
              + (f"  differ: {r['differ']}" if r["differ"] else ""))
    summary = {
        "kills": n_kills,
        "killed_in": {s: sum(r["stage"] == s for r in rows) for s in dict.fromkeys(r["stage"] for r in rows)},
        "resumable": sum(r["resumable"] for r in rows),
        "resumed": sum(r["resumed"] for r in rows),
        "resumed_from_step": sum(r["from_step"] for r in rows),
        "recomputed_finished_stages": sum(len(r["recomputed_finished"]) for r in rows),
        "reruns_ok": sum(r["rerun_rc"] == 0 for r in rows),
        "figures_equal": sum(r["figures_equal"] for r in rows),
        "leftover_partials": sum(len(r["leftovers"]) for r in rows),
        "stale_locks": len(locks),
        "clean_run_s": round(clean_s, 1),
        "wall_s": round(time.time() - t_start, 1),
        "quick": args.quick,
    }
    if args.keep:
        print(f"run directories kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
