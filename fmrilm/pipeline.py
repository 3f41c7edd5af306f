"""The main job: every stage in order on one run directory, skipping stages already finished.

    fmrilm pipeline --config demo            # what `make demo` runs → runs/demo/
    fmrilm pipeline --config demo --force tokenizer   # redo one stage (and so everything after it)

A run directory holds one subdirectory per stage. A stage counts as finished when its directory
holds a ``manifest.json`` (datasets) or ``config.json``/``tokenizer_config.json`` (models):
every stage writes that file last, atomically, so an interrupted stage is simply run again.
Stages only exchange saved artifacts (data flows forward through the directory tree).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from fmrilm.config import apply_overrides, from_dict, load_config, load_yaml, save_config
from fmrilm.errors import InputError
from fmrilm.io import write_json


@dataclass
class StageSpec:
    config: str = ""  # shipped config name or path for that stage
    set: list[str] = field(default_factory=list)  # overrides for the stage config
    enabled: bool = True


@dataclass
class PipelineConfig:
    run_dir: str = "runs/demo"
    seed: int = 0
    stages: dict[str, StageSpec] = field(default_factory=dict)


def _task_world(run: Path, spec: StageSpec, seed: int) -> Path:
    from fmrilm.brain.task_world import TaskWorldConfig, generate_task_world

    cfg = load_config(TaskWorldConfig, spec.config, [f"seed={seed}", *spec.set])
    return generate_task_world(cfg, run / "task_world", overwrite=True)


def _rest_world(run: Path, spec: StageSpec, seed: int) -> Path:
    from fmrilm.brain.rest_world import RestWorldConfig, generate_rest_population

    cfg = load_config(RestWorldConfig, spec.config, [f"seed={seed}", *spec.set])
    return generate_rest_population(cfg, run / "rest_world", overwrite=True)


# Stage name → (output directory, file that marks it finished, runner). Order is execution order.
STAGES = {
    "task_world": ("task_world", "manifest.json", _task_world),
    "rest_world": ("rest_world", "manifest.json", _rest_world),
}


def summarize(run: Path) -> dict:
    """What exists in the run directory, stage by stage (the report grows as stages land)."""
    from fmrilm.brain.store import Dataset

    report = {"run_dir": str(run), "stages": {}}
    for name, (sub, marker, _) in STAGES.items():
        path = run / sub
        if not (path / marker).is_file():
            continue
        entry = {"path": str(path)}
        if marker == "manifest.json":
            ds = Dataset(path)
            entry.update(kind=ds.kind, arrays={k: v["shape"] for k, v in ds.manifest["arrays"].items()},
                         tables=ds.manifest.get("tables", {}))
        report["stages"][name] = entry
    return report


def run_pipeline(cfg: PipelineConfig, force: list[str] | None = None) -> dict:
    """Run every enabled stage not yet finished; `force` names stages to redo (with all later ones)."""
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "pipeline_config.yaml")
    redo = False
    timings = {}
    for name, (sub, marker, runner) in STAGES.items():
        spec = cfg.stages.get(name)
        if spec is None or not spec.enabled:
            continue
        redo = redo or name in (force or []) or "all" in (force or [])
        if (run / sub / marker).is_file() and not redo:
            print(f"[pipeline] {name}: finished earlier, skipped ({run / sub})", flush=True)
            continue
        redo = True  # everything after a re-run stage depends on it
        print(f"[pipeline] {name}: running", flush=True)
        t0 = time.time()
        runner(run, spec, cfg.seed)
        timings[name] = round(time.time() - t0, 2)
        print(f"[pipeline] {name}: done in {timings[name]} s", flush=True)
    report = summarize(run)
    report["timings_s"] = timings
    write_json(run / "report.json", report)
    return report


def load_pipeline_config(name_or_path: str, overrides: list[str] | None = None) -> PipelineConfig:
    data = load_yaml(name_or_path)
    apply_overrides(data, overrides)
    stages = {k: from_dict(StageSpec, v or {}, f"{name_or_path}.stages.{k}") for k, v in data.pop("stages", {}).items()}
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise InputError(name_or_path, "stages", f"unknown stage(s) {unknown}; known: {list(STAGES)}")
    cfg = from_dict(PipelineConfig, data, str(name_or_path))
    cfg.stages = stages
    return cfg
