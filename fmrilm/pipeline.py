"""The main job: every stage in order on one run directory, skipping stages already finished.

    fmrilm pipeline --config demo                       # what `make demo` runs → runs/demo/
    fmrilm pipeline --config demo --force tokenizer     # redo one stage and every stage after it

A run directory holds one subdirectory per stage and ``stages.json``, which maps each finished
stage to the artifact it produced, relative to the run directory (so a moved or copied run finds its
own artifacts and skips what is finished). A stage is recorded only after its artifact is complete
(every artifact is itself written atomically), so an interrupted run resumes at the first unfinished
stage. Stages exchange nothing but these saved artifacts: each runner receives the paths of the
earlier stages' artifacts and returns the path of its own.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from fmrilm.artifacts import DATASET_STAGES, read_state, write_state
from fmrilm.brain.sources import SourceConfig, check_source
from fmrilm.brain.store import sweep_dead_partials
from fmrilm.config import (
    CONFIG_DIR,
    apply_overrides,
    check_required,
    from_dict,
    load_config,
    load_yaml,
    required_path,
    resolve_config_path,
    save_config,
)
from fmrilm.errors import InputError
from fmrilm.io import RUN_MARKER, write_json


@dataclass
class StageSpec:
    config: str = ""  # shipped config name or path for that stage
    set: list[str] = field(default_factory=list)  # overrides for the stage config
    enabled: bool = True
    nproc: int = 1  # ranks of an LM stage (joint, instruct) under the deepspeed launcher; 1: in this process


@dataclass
class PipelineConfig:
    run_dir: str = required_path()  # no default: demo.yaml says runs/demo
    seed: int = 0
    source: SourceConfig = field(default_factory=SourceConfig)  # own data, read by the import stages
    stages: dict[str, StageSpec] = field(default_factory=dict)


@dataclass
class StageContext:
    """What a stage runner gets: its own spec, the run directory, and earlier stages' artifacts."""

    name: str
    run: Path
    spec: StageSpec
    seed: int
    artifacts: dict[str, str]
    source: SourceConfig = field(default_factory=SourceConfig)

    @property
    def out_dir(self) -> Path:
        """The stage's own directory, ``run/<stage name>``: everything it writes goes here."""
        return self.run / self.name

    def load(self, cls, seed_key: str | None = "seed", extra: list[str] | None = None):
        """The stage's typed config: its YAML, then the pipeline's seed and paths, then its own overrides.

        The paths in `extra` come from this run's ``stages.json`` (:data:`FILLED_KEYS`)."""
        unlisted = {item.split("=", 1)[0] for item in extra or []} - set(FILLED_KEYS.get(self.name, ()))
        if unlisted:  # a runner filling a key the up-front override check does not know about
            raise RuntimeError(f"stage {self.name} fills {sorted(unlisted)}, missing from FILLED_KEYS")
        overrides = ([f"{seed_key}={self.seed}"] if seed_key else []) + list(extra or []) + list(self.spec.set)
        # A stage without a config file starts from the dataclass defaults.
        return load_config(cls, self.spec.config or None, overrides)

    def artifact(self, stage: str) -> str:
        if stage not in self.artifacts:
            raise InputError(self.run / "stages.json", stage, "needed by a later stage but not finished")
        return self.artifacts[stage]

    def dataset(self, kind: str, required: bool = True) -> str | None:
        """The run's `kind` ("task" or "rest") dataset: imported own data or the synthetic world (None
        when the run has neither and it is not `required`)."""
        found = [self.artifacts[s] for s in DATASET_STAGES[kind] if s in self.artifacts]
        if not found and required:
            raise InputError(self.run / "stages.json", " or ".join(DATASET_STAGES[kind]),
                             f"stage {self.name} needs a {kind} dataset and neither stage finished")
        return found[0] if found else None


# The config keys each stage's runner fills in from earlier stages' artifacts. A stage's `set` may not
# override them: an artifact of another run would mix two runs (checked before any stage runs).
FILLED_KEYS = {
    "splits": ("task_dataset", "rest_dataset", "out"),
    "rest_tokenizer": ("data.dataset", "data.splits", "out_dir"),
    "tokenizer": ("data.dataset", "data.splits", "out_dir", "rest_tokenizer"),
    "retrieval": ("out", "corpus", "tokenizer", "splits"),
    "corpus": ("splits", "task_dataset", "task_tokens", "rest_dataset", "rest_tokens"),
    "backbone": ("out_dir", "corpus"),
    "joint": ("out_dir", "corpus", "tokenizer", "llm.backbone"),
    "instruct": ("out_dir", "corpus", "model", "retrieval"),
    "evaluation": ("out", "corpus", "splits", "tokenizer", "model"),
    "stimulation": ("out", "corpus", "tokenizer", "model"),
    "rest_fewshot": ("out", "corpus", "splits", "tokenizer", "model"),
}


def check_overrides(stages: dict[str, StageSpec], source: str) -> None:
    """Refuse a stage override of a path the pipeline fills in from the run's own artifacts."""
    for name, spec in stages.items():
        for item in spec.set:
            if item.split("=", 1)[0] in FILLED_KEYS.get(name, ()):
                raise InputError(source, f"stages.{name}.set", f"{item!r}: the pipeline fills this path from "
                                 "the run's own stages.json; an artifact of another run would mix two runs "
                                 "(run that stage on its own instead)")




def _task_import(ctx: StageContext) -> Path:
    from fmrilm.brain.sources import import_task_source

    return import_task_source(ctx.source, ctx.out_dir, overwrite=True)


def _rest_import(ctx: StageContext) -> Path:
    from fmrilm.brain.sources import import_rest_source

    return import_rest_source(ctx.source, ctx.out_dir, overwrite=True)


def _task_world(ctx: StageContext) -> Path:
    from fmrilm.brain.task_world import TaskWorldConfig, generate_task_world

    return generate_task_world(ctx.load(TaskWorldConfig), ctx.out_dir, overwrite=True)


def _rest_world(ctx: StageContext) -> Path:
    from fmrilm.brain.rest_world import RestWorldConfig, generate_rest_population

    return generate_rest_population(ctx.load(RestWorldConfig), ctx.out_dir, overwrite=True)


def _splits(ctx: StageContext) -> Path:
    from fmrilm.brain.splits import SPLITS_FILE, SplitsConfig, write_run_splits

    datasets = [f"{kind}_dataset={ctx.dataset(kind, False)}" for kind in DATASET_STAGES if ctx.dataset(kind, False)]
    return write_run_splits(ctx.load(SplitsConfig, "seed", [*datasets, f"out={ctx.out_dir / SPLITS_FILE}"]),
                            overwrite=True)


def _tokenizer_stage(kind: str):
    """Stage 1 on the run's `kind` dataset; the task tokenizer carries a finished ``rest_tokenizer``
    as its rest companion (rest patches beside task codes in one LM vocabulary)."""

    def runner(ctx: StageContext) -> Path:
        from fmrilm.stages.tokenizer import TokenizerStageConfig, run

        filled = [f"data.dataset={ctx.dataset(kind)}", f"data.splits={ctx.artifact('splits')}",
                  f"out_dir={ctx.out_dir}"]
        if kind == "task" and "rest_tokenizer" in ctx.artifacts:
            filled.append(f"rest_tokenizer={ctx.artifact('rest_tokenizer')}")
        return run(ctx.load(TokenizerStageConfig, "engine.seed", filled))

    return runner


def _retrieval(ctx: StageContext) -> Path:
    from fmrilm.retrieval.search import SearchIndexConfig, build_search_indexes

    cfg = ctx.load(SearchIndexConfig, "seed", [f"out={ctx.out_dir}", f"corpus={ctx.artifact('corpus')}",
                                              f"tokenizer={ctx.artifact('tokenizer')}",
                                              f"splits={ctx.artifact('splits')}"])
    return build_search_indexes(cfg, overwrite=True)


def _real_rest(ctx: StageContext) -> Path:
    from fmrilm.brain.rest_run import RestImportConfig, import_configured_run

    return import_configured_run(ctx.load(RestImportConfig, seed_key=None), ctx.out_dir, overwrite=True)


def _tokens(source: str):
    """The tokens of one dataset: ``task`` / ``rest`` (the run's dataset of that kind) or a stage's."""

    def runner(ctx: StageContext) -> Path:
        from fmrilm.tokenizer.model import BrainTokenizer
        from fmrilm.tokenizer.tokens import TokensConfig, write_tokens_dataset

        cfg = ctx.load(TokensConfig, seed_key=None)
        tok_dir = ctx.artifact("tokenizer")
        tokenizer = BrainTokenizer.from_pretrained(tok_dir).eval()
        dataset = ctx.dataset(source) if source in DATASET_STAGES else ctx.artifact(source)
        return write_tokens_dataset(tokenizer, dataset, ctx.out_dir, cfg.batch_size, overwrite=True,
                                    tokenizer_dir=tok_dir, latents=cfg.latents)

    return runner


def _corpus(ctx: StageContext) -> Path:
    from fmrilm.corpus.build import CorpusConfig, build_corpus

    inputs = [f"splits={ctx.artifact('splits')}"]
    for kind in DATASET_STAGES:  # a run without rest (or task) data builds a corpus of the other kind
        if ctx.dataset(kind, False):
            inputs += [f"{kind}_dataset={ctx.dataset(kind)}", f"{kind}_tokens={ctx.artifact(f'{kind}_tokens')}"]
        else:
            inputs += [f"{kind}_dataset=null", f"{kind}_tokens=null"]
    cfg = ctx.load(CorpusConfig, "seed", inputs)
    build_corpus(cfg, ctx.out_dir, overwrite=True)
    return ctx.out_dir


def _backbone(ctx: StageContext) -> Path:
    from fmrilm.stages.backbone import BackboneStageConfig, run

    return run(ctx.load(BackboneStageConfig, "engine.seed",
                        [f"out_dir={ctx.out_dir}", f"corpus={ctx.artifact('corpus')}"]))


def _launch(ctx: StageContext, stage: str, module, cfg) -> Path:
    """Run an LM stage in this process, or with ``nproc`` > 1 on that many ranks under the deepspeed launcher
    (CPU processes here, GPUs where there are): the resolved config is written beside the stage's output
    and the launched ranks read it, so both ways train the same recipe."""
    import torch

    if ctx.spec.nproc == 1:
        return module.run(cfg)
    if torch.cuda.is_available() and ctx.spec.nproc > torch.cuda.device_count():
        raise InputError(ctx.run / RUN_MARKER, f"stages.{ctx.name}.nproc",
                         f"{ctx.spec.nproc} ranks for {torch.cuda.device_count()} visible GPU(s)")
    from fmrilm.device import free_port
    from fmrilm.stages import lm_common
    from fmrilm.stages.commands import run_stage

    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    config = ctx.out_dir / f"{stage}_launch_config.yaml"
    save_config(cfg, config)
    # a free rendezvous port: the launcher's default would collide with another run on this node
    status = run_stage(stage, str(config), nproc=ctx.spec.nproc, master_port=free_port())
    export = module.names(cfg)[0]
    if status != 0 or not lm_common.is_finished(export):
        raise RuntimeError(f"stage {stage} on {ctx.spec.nproc} ranks exited with status {status} without "
                           f"finishing {export} (its ranks' output is above)")
    return export


LAUNCHED = {"joint", "instruct"}  # the stages `nproc` applies to


def _joint(ctx: StageContext) -> Path:
    from fmrilm.stages import joint

    return _launch(ctx, "joint", joint, ctx.load(joint.JointStageConfig, "engine.seed", [
        f"out_dir={ctx.out_dir}", f"corpus={ctx.artifact('corpus')}",
        f"tokenizer={ctx.artifact('tokenizer')}", f"llm.backbone={ctx.artifact('backbone')}"]))


def _instruct(ctx: StageContext) -> Path:
    from fmrilm.stages import instruct

    return _launch(ctx, "instruct", instruct, ctx.load(instruct.InstructStageConfig, "engine.seed", [
        f"out_dir={ctx.out_dir}", f"corpus={ctx.artifact('corpus')}",
        f"model={ctx.artifact('joint')}", f"retrieval={ctx.artifact('retrieval')}"]))


def _evaluation(ctx: StageContext) -> Path:
    from fmrilm.evaluation.runner import EvalConfig, run_evaluation

    cfg = ctx.load(EvalConfig, "seed", [f"out={ctx.out_dir}", f"corpus={ctx.artifact('corpus')}",
                                        f"splits={ctx.artifact('splits')}",
                                        f"tokenizer={ctx.artifact('tokenizer')}", f"model={ctx.artifact('instruct')}"])
    run_evaluation(cfg, overwrite=True)
    return Path(cfg.out)


def _stimulation(ctx: StageContext) -> Path:
    from fmrilm.stimulation.experiment import StimulationConfig, run_stimulation

    cfg = ctx.load(StimulationConfig, "seed", [
        f"out={ctx.out_dir}", f"corpus={ctx.artifact('corpus')}",
        f"tokenizer={ctx.artifact('tokenizer')}", f"model={ctx.artifact('instruct')}"])
    run_stimulation(cfg, overwrite=True)
    return Path(cfg.out)


def _rest_fewshot(ctx: StageContext) -> Path:
    from fmrilm.evaluation.rest_fewshot import RestFewShotConfig, run_rest_fewshot

    cfg = ctx.load(RestFewShotConfig, "seed", [
        f"out={ctx.out_dir}", f"corpus={ctx.artifact('corpus')}", f"splits={ctx.artifact('splits')}",
        f"tokenizer={ctx.artifact('tokenizer')}", f"model={ctx.artifact('instruct')}"])
    run_rest_fewshot(cfg, overwrite=True)
    return Path(cfg.out)


# Stage name → runner, in execution order. The splits are decided once, before anything is fitted,
# and handed to every stage that fits or scores on data. A forced stage redoes every later one, so each stage sits
# as late as its consumers allow: the search indexes just before stage 3 (whose prompts carry the
# captions they retrieve), the real rest run after the LM stages (`--force real_rest` never retrains
# the LM). Nothing trains on the real run: it is held out for the evaluation's next-scan R².
STAGES = {
    "task_import": _task_import,
    "rest_import": _rest_import,
    "task_world": _task_world,
    "rest_world": _rest_world,
    "splits": _splits,
    "rest_tokenizer": _tokenizer_stage("rest"),
    "tokenizer": _tokenizer_stage("task"),
    "task_tokens": _tokens("task"),
    "rest_tokens": _tokens("rest"),
    "corpus": _corpus,
    "backbone": _backbone,
    "joint": _joint,
    "retrieval": _retrieval,
    "instruct": _instruct,
    "real_rest": _real_rest,
    "real_rest_tokens": _tokens("real_rest"),
    "evaluation": _evaluation,
    "stimulation": _stimulation,
    "rest_fewshot": _rest_fewshot,
}


def run_pipeline(cfg: PipelineConfig, force: list[str] | None = None) -> dict:
    """Run every enabled stage not yet finished; `force` names stages to redo (with all later ones)."""
    force = list(force or [])
    unknown = sorted(set(force) - set(STAGES) - {"all"})
    if unknown:
        raise InputError("--force", ", ".join(unknown), f"unknown stage(s); known: {list(STAGES)}")
    for name, spec in cfg.stages.items():
        if spec.nproc != 1 and (name not in LAUNCHED or spec.nproc < 1):
            raise InputError("pipeline config", f"stages.{name}.nproc",
                             f"{spec.nproc}: only {sorted(LAUNCHED)} run on several ranks (nproc >= 1)")
    enabled = {name for name, spec in cfg.stages.items() if spec.enabled}
    for kind, stages in DATASET_STAGES.items():
        if set(stages) <= enabled:
            raise InputError("pipeline config", f"stages.{stages[0]} / stages.{stages[1]}",
                             f"both give the run its {kind} dataset; enable one")
    check_source(cfg.source, enabled, "pipeline config")
    check_overrides(cfg.stages, "pipeline config")
    check_required(cfg, "pipeline config")
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    for leftover in sweep_dead_partials(run):
        print(f"[pipeline] removed {leftover}, left by a killed run", flush=True)
    save_config(cfg, run / RUN_MARKER)  # also marks the run root for portable_path
    state = read_state(run)
    redo = "all" in force
    timings = {}
    for name, runner in STAGES.items():
        spec = cfg.stages.get(name)
        if spec is None or not spec.enabled:
            continue
        redo = redo or name in force
        if name in state and not redo:
            print(f"[pipeline] {name}: finished earlier, skipped ({state[name]})", flush=True)
            continue
        redo = True  # everything after a re-run stage depends on it
        if name in state:  # a forced redo starts clean: no stale checkpoints to resume from
            shutil.rmtree(run / name, ignore_errors=True)
        print(f"[pipeline] {name}: running", flush=True)
        t0 = time.time()
        state[name] = str(runner(StageContext(name, run, spec, cfg.seed, dict(state), cfg.source)))
        timings[name] = round(time.time() - t0, 2)
        write_state(run, state)
        print(f"[pipeline] {name}: done in {timings[name]} s → {state[name]}", flush=True)
    report = {"run_dir": str(run), "artifacts": state, "timings_s": timings}
    write_json(run / "pipeline_report.json", report)
    return report


def load_pipeline_config(name_or_path: str, overrides: list[str] | None = None) -> PipelineConfig:
    """The pipeline config `name_or_path` (a path or shipped name) with `overrides`.

    A stage's ``config`` is a path (as given, from the working directory), a shipped config name, or
    else a path relative to the pipeline YAML's own directory (``config: eval_small.yaml`` beside it),
    which is made absolute here so that the stage finds it from anywhere.
    """
    data = apply_overrides(load_yaml(name_or_path), overrides)
    stages = {k: from_dict(StageSpec, v or {}, f"{name_or_path}.stages.{k}")
              for k, v in data.pop("stages", {}).items()}
    here = resolve_config_path(name_or_path).parent
    for spec in stages.values():
        if spec.config and not Path(spec.config).is_file() and not (CONFIG_DIR / f"{spec.config}.yaml").is_file() \
                and (here / spec.config).is_file():
            spec.config = str((here / spec.config).resolve())
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise InputError(name_or_path, "stages", f"unknown stage(s) {unknown}; known: {list(STAGES)}")
    cfg = from_dict(PipelineConfig, data, str(name_or_path))
    cfg.stages = stages
    check_source(cfg.source, {n for n, s in stages.items() if s.enabled}, str(name_or_path))
    check_overrides(stages, str(name_or_path))
    return cfg
