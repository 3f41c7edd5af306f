"""Seed spread of the headline figures: the LM stages and the evaluation rerun with several training seeds.

One world, one tokenizer, one corpus; only the language model's training seed changes. Run::

    python benchmarks/seeds.py                           # demo pipeline, training seeds 0 1 2 (~32 min)
    python benchmarks/seeds.py --quick                   # pipeline_tiny (~1.5 min on 2 idle cores)
    python benchmarks/seeds.py --seeds 0 1 2 3 4 --run-dir runs/seeds   # kept; a rerun resumes
    python benchmarks/seeds.py --set 'stages.evaluation.set=[meteor=false]'   # pipeline overrides

The base run directory (``--run-dir``, default a temporary one, removed at the end unless ``--keep``)
gets every stage that reads no LM artifact, once, at the pipeline's seed: the stages before the first
LM stage (worlds, splits, tokenizer, tokens, corpus) and the later LM-free ones: the search indexes
(their brain embedder is trained on the corpus and the tokenizer, never on the LM) and the real rest
run with its tokens (the evaluation looks for them beside the corpus, i.e. in the base run). Each seed
``s`` then gets ``<run-dir>/seed-<s>``, whose ``stages.json`` points at the shared artifacts and which
runs the LM stages and the evaluation. In each LM stage (a stage whose config has an ``engine``
section) every ``seed`` of its config is set to ``s``: ``engine.seed`` (data order, dropout) and the
model's initialisation seed (``bootstrap.seed``, ``llm.seed``). The evaluation keeps the pipeline's
seed, so every seed is scored on the same items by the same LM-free baselines (the ridge decoder and
the retrieval heads, so ``top-1 (token head) - ridge`` does not move with the seed). Stages after the
evaluation (stimulation) write no headline figure and are not run.

Prints one row per figure (per-seed values, mean ± sample sd, the target where the report has one)
and, as its last line, ``{"seeds": [...], "figures": {label: {"values", "mean", "sd"}}, "wall_s"}``.
A figure missing from a report is listed as missing, with the reason the report gives. At ``--quick``
size the LM trains for a handful of steps, so the figures test the machinery, not the model. Two
fresh runs at one seed can differ slightly (multi-threaded CPU accumulation, see docs/design.md,
"Training stages and DeepSpeed"), so the sd holds that run-to-run noise as well as the seed's effect.
Cost: the shared stages once, then per seed the LM stages and the evaluation (demo run 8's stage
times: about 200 s shared, then 76 + 30 + 266 + 201 s per seed; pipeline_tiny: about 25 s, then 15 s).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from fmrilm.config import load_yaml
from fmrilm.io import read_json, write_json
from fmrilm.pipeline import STAGES, load_pipeline_config, read_state, run_pipeline

# test-size configs live with the tests, not in the package
TEST_CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "configs"

FIRST_LM_STAGE = "backbone"  # every stage before it in fmrilm.pipeline.STAGES is shared by the seeds
FIGURES_STAGE = "evaluation"  # writes report.json; later stages are not run
# Stages after the first LM stage that read no LM artifact: one run serves every seed.
LM_FREE_STAGES = ("retrieval", "real_rest", "real_rest_tokens")

# Headline figures of evaluation/report.json: (label, dotted path). VQA by question type and every
# target not listed here are added from the reports themselves.
FIGURES = [
    ("caption SemScore: model", "captioning.model.semscore"),
    ("caption SemScore: shuffled", "captioning.shuffled.semscore"),
    ("caption SemScore: model / shuffled", "targets.caption_semscore_vs_shuffled.measured"),
    ("caption SemScore: model - ridge", "targets.caption_semscore_minus_ridge.measured"),
    ("VQA: model", "vqa.model.overall"),
    ("VQA: shuffled", "vqa.shuffled.overall"),
    ("VQA: model / shuffled", "targets.vqa_vs_shuffled.measured"),
    ("top-1 (token head) - ridge", "targets.top1_minus_ridge.measured"),
    ("zero-shot naming: model", "zero_shot.model.fraction"),
    ("rest sex accuracy", "rest.phenotype.sex.model.accuracy"),
    ("rest diagnosis accuracy", "rest.phenotype.diagnosis.model.accuracy"),
    ("rest age MAE (years)", "rest.phenotype.age.model.mae"),
    ("next-scan R2: synthetic", "rest.temporal.model"),
    ("next-scan R2: real run", "rest.temporal_real_run.model"),
]


# ------------------------------------------------------------------------------ the runs
def stage_roles(cfg) -> tuple[list[str], list[str]]:
    """(shared, per-seed) enabled stages of pipeline config `cfg`, each in ``STAGES`` order."""
    order = list(STAGES)
    for name in (FIRST_LM_STAGE, FIGURES_STAGE, *LM_FREE_STAGES):
        if name not in order:
            raise RuntimeError(f"benchmarks/seeds.py names stage {name!r}, which fmrilm.pipeline.STAGES lacks")
    first, last = order.index(FIRST_LM_STAGE), order.index(FIGURES_STAGE)
    enabled = [n for n in order if n in cfg.stages and cfg.stages[n].enabled]
    shared = [n for n in enabled if order.index(n) < first or n in LM_FREE_STAGES]
    per_seed = [n for n in enabled if first <= order.index(n) <= last and n not in LM_FREE_STAGES]
    if FIGURES_STAGE not in per_seed:
        raise RuntimeError(f"the pipeline config does not run stage {FIGURES_STAGE!r}: no figures to compare")
    return shared, per_seed


def seed_keys(spec) -> list[str]:
    """Dotted paths of every ``seed`` in an LM stage's config (``engine.seed`` always); [] if not an LM stage."""
    data = load_yaml(spec.config) if spec.config else {}
    if "engine" not in data:
        return []
    keys = {"engine.seed"}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif key == "seed":
                keys.add(prefix + key)

    walk(data, "")
    return sorted(keys)


def keep_only(cfg, names: list[str]):
    for name, spec in cfg.stages.items():
        spec.enabled = name in names
    return cfg


def run_seed(args, base: Path, shared: list[str], per_seed: list[str], seed: int) -> dict:
    """Run the per-seed stages in ``base/seed-<seed>`` on the shared artifacts; return its report.json."""
    run = base / f"seed-{seed}"
    cfg = keep_only(load_pipeline_config(args.config, [*args.set, f"run_dir={run}"]), per_seed)
    seeded = [n for n in per_seed if seed_keys(cfg.stages[n])]
    if not seeded:
        raise RuntimeError(f"no stage of {per_seed} has an `engine` section in its config: nothing to reseed")
    for name in seeded:
        cfg.stages[name].set += [f"{key}={seed}" for key in seed_keys(cfg.stages[name])]
    # The pipeline skips a disabled stage but hands its stages.json entry to later stages; entries of
    # this seed's own finished stages are kept, so a rerun resumes. The shared ones lie outside the
    # seed's run directory, so they are recorded absolute.
    base_state = {n: str(Path(p).resolve()) for n, p in read_state(base).items()}
    state = read_json(run / "stages.json") if (run / "stages.json").is_file() else {}
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / "stages.json", {**state, **{n: base_state[n] for n in shared}})
    with warnings.catch_warnings():  # the pipeline warns of entries outside the run: these are meant to be
        warnings.filterwarnings("ignore", message=".*points outside this run", category=RuntimeWarning)
        run_pipeline(cfg)
        return read_json(Path(read_state(run)[FIGURES_STAGE]) / "report.json")


# ------------------------------------------------------------------------------ the figures
def lookup(report: dict, keys) -> tuple[float | None, str]:
    """(value, "") at `keys`, or (None, why it is missing: the report's skip reason or the absent key)."""
    node = report
    for i, key in enumerate(keys):
        if isinstance(node, dict) and node.get("status") == "skipped":
            return None, f"{'.'.join(keys[:i])} skipped: {node.get('reason', '')}"
        if not isinstance(node, dict) or key not in node:
            return None, f"no {'.'.join(keys[:i + 1])}"
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return None, f"{'.'.join(keys)} is {node!r}"
    if not math.isfinite(node):
        return None, f"{'.'.join(keys)} is {node}"
    return float(node), ""


def figure_paths(reports: list[dict]) -> list[tuple[str, tuple[str, ...]]]:
    """FIGURES, VQA accuracy per question type, and every other target, in the reports' own order."""
    rows = [(label, tuple(path.split("."))) for label, path in FIGURES]
    types = {t: None for r in reports for t in r.get("vqa", {}).get("model", {}).get("by_type", {})}
    at = next(i for i, (label, _) in enumerate(rows) if label == "VQA: model / shuffled") + 1
    rows[at:at] = [(f"VQA {t}: model", ("vqa", "model", "by_type", t, "accuracy")) for t in types]
    listed = {path[1] for _, path in rows if path[0] == "targets"}
    targets = {t: None for r in reports for t in r.get("targets", {}) if t not in listed}
    return rows + [(f"target {t}", ("targets", t, "measured")) for t in targets]


def summarise(reports: list[dict]) -> tuple[dict, list[str]]:
    """Per figure {values, mean, sd (ddof=1)} (+ threshold and met per seed for targets); missing notes."""
    figures, missing = {}, []
    for label, keys in figure_paths(reports):
        values = []
        for seed_report in reports:
            value, why = lookup(seed_report, keys)
            values.append(value)
            if why:
                missing.append(f"{label}: {why}")
        present = np.array([v for v in values if v is not None])
        entry = {"values": values, "mean": float(present.mean()) if present.size else None,
                 "sd": float(present.std(ddof=1)) if present.size > 1 else None}
        if keys[0] == "targets":
            target = next((r["targets"][keys[1]] for r in reports if keys[1] in r.get("targets", {})), {})
            entry["threshold"] = target.get("threshold")
            entry["met"] = [r.get("targets", {}).get(keys[1], {}).get("met") for r in reports]
        figures[label] = entry
    return figures, sorted(set(missing))


def fmt(value) -> str:
    return "missing" if value is None else f"{value:.4g}"


def print_table(seeds: list[int], figures: dict, missing: list[str]) -> None:
    width = max(map(len, figures)) + 2
    head = "".join(f"{'seed ' + str(s):>11s}" for s in seeds)
    print(f"\n{'figure':{width}s}{head}  {'mean ± sd':>20s}  target")
    for label, f in figures.items():
        cells = "".join(f"{fmt(v):>11s}" for v in f["values"])
        spread = f"{fmt(f['mean'])} ± {fmt(f['sd'])}" if f["mean"] is not None else "missing"
        target = ""
        if "met" in f:
            target = f"≥ {fmt(f['threshold'])}: met {sum(bool(m) for m in f['met'])}/{len(seeds)}"
        print(f"{label:{width}s}{cells}  {spread:>20s}  {target}")
    for note in missing:
        print(f"  missing: {note}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="tests/configs/pipeline_tiny.yaml instead of --config")
    parser.add_argument("--config", default="demo", help="pipeline config (default: demo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    parser.add_argument("--run-dir", help="base run directory (default: a temporary one); never removed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary run directory")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="pipeline config overrides, as `fmrilm pipeline --set` takes them")
    args = parser.parse_args(argv)
    if args.quick:
        args.config = str(TEST_CONFIGS / "pipeline_tiny.yaml")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds repeats a seed: {args.seeds}")

    start = time.time()
    base = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="seeds-"))
    try:
        base_cfg = load_pipeline_config(args.config, [*args.set, f"run_dir={base}"])
        shared, per_seed = stage_roles(base_cfg)
        print(f"[seeds] shared, once in {base}: {' → '.join(shared)}", flush=True)
        run_pipeline(keep_only(base_cfg, shared))
        reports = []
        for i, seed in enumerate(args.seeds):
            t0 = time.time()
            print(f"[seeds] seed {seed} ({i + 1}/{len(args.seeds)}): {' → '.join(per_seed)}", flush=True)
            reports.append(run_seed(args, base, shared, per_seed, seed))
            print(f"[seeds] seed {seed} done in {time.time() - t0:.1f} s", flush=True)
    finally:
        if args.run_dir is None and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    figures, missing = summarise(reports)
    wall = round(time.time() - start, 1)
    print(f"\nseed spread ({args.config}, training seeds {args.seeds}, {wall} s"
          f"{', kept in ' + str(base) if args.keep or args.run_dir else ''})")
    print_table(args.seeds, figures, missing)
    print(json.dumps({"config": args.config, "seeds": args.seeds, "figures": figures, "wall_s": wall}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
