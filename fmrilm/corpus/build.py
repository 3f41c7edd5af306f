"""Build a corpus directory: inputs → descriptors → splits → samples → shuffled shards + manifests.

Launch::

    fmrilm corpus build --config corpus_demo --out runs/demo/corpus \
        --set task_dataset=runs/demo/task task_tokens=runs/demo/task_tokens \
              rest_dataset=runs/demo/rest rest_tokens=runs/demo/rest_tokens

Every input problem is raised before the first shard is written. Each split's samples are shuffled
with the seed before writing, so every shard mixes tasks, subjects and stimuli (a reader that
takes whole shards still sees a representative stream). Rebuilding with ``--force`` is idempotent:
same inputs and seed give byte-identical shards, and shards no manifest lists are removed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fmrilm.artifacts import check_recorded, corpus_record
from fmrilm.brain.splits import read_splits
from fmrilm.config import save_config, to_dict
from fmrilm.corpus import SPLITS, TASKS
from fmrilm.corpus.descriptors_rest import RestDescriptorConfig, rest_features
from fmrilm.corpus.inputs import CorpusInputs, open_inputs
from fmrilm.corpus.samples import PHENOTYPE_INPUTS, Sample, SampleBuilder, SampleConfig
from fmrilm.corpus.shards import SplitWriter, remove_stale
from fmrilm.corpus.splits import check_leakage, novel_pattern, trial_splits
from fmrilm.errors import InputError
from fmrilm.io import write_json
from fmrilm.seeds import stream


@dataclass
class ShardConfig:
    """Shard rollover limits: a shard closes at `maxcount` samples or `maxsize` bytes."""

    maxcount: int = 5000
    maxsize: int = 64_000_000


@dataclass
class CorpusConfig:
    """Everything a corpus build needs (YAML: ``fmrilm/configs/corpus_*.yaml``).

    Attributes
    ----------
    task_dataset, task_tokens : str or None
        Task dataset directory and the tokens dataset encoding it (both or neither).
    rest_dataset, rest_tokens : str or None
        Rest dataset directory and its tokens dataset (both or neither).
    splits : str
        The run's splits file (:mod:`fmrilm.brain.splits`); the tokens must come from a tokenizer
        trained on the same one.
    seed : int
    samples, descriptors, shards
        See :class:`SampleConfig`, :class:`RestDescriptorConfig`, :class:`ShardConfig`.
    """

    task_dataset: str | None = None
    task_tokens: str | None = None
    rest_dataset: str | None = None
    rest_tokens: str | None = None
    splits: str = ""
    seed: int = 0
    samples: SampleConfig = field(default_factory=SampleConfig)
    descriptors: RestDescriptorConfig = field(default_factory=RestDescriptorConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def validate(self, source: str = "corpus config") -> None:
        unknown = sorted(set(self.samples.tasks) - set(TASKS))
        if unknown:
            raise InputError(source, "samples.tasks", f"unknown task(s) {unknown}; known: {list(TASKS)}")
        if not self.splits:
            raise InputError(source, "splits", "no splits file given (write one with `fmrilm splits`)")
        if self.shards.maxcount < 1 or self.shards.maxsize < 1:
            raise InputError(source, "shards", f"maxcount {self.shards.maxcount} and maxsize "
                             f"{self.shards.maxsize} must be positive")
        bad = sorted(set(self.samples.phenotype_inputs) - set(PHENOTYPE_INPUTS))
        if bad or not self.samples.phenotype_inputs:
            raise InputError(source, "samples.phenotype_inputs", f"{bad or 'empty'}; known: {list(PHENOTYPE_INPUTS)}")
        if self.samples.phenotype_scans < 0:
            raise InputError(source, "samples.phenotype_scans", f"{self.samples.phenotype_scans}: windows per "
                             "phenotype sample, >= 0 (0: every window of the run)")
        if self.samples.temporal_context < 1 or self.samples.temporal_stride < 1:
            raise InputError(source, "samples.temporal_context/temporal_stride", "must be >= 1")


@dataclass
class Plan:
    """Splits and samples of a corpus, decided before anything is written."""

    samples: list[Sample]
    novel_categories: list[str]
    fewshot_subjects: set
    dropped_novel: int
    task_fewshot_subjects: list
    splits: dict
    dropped_heldout_captions: int


def plan_corpus(cfg: CorpusConfig, inputs: CorpusInputs, progress: bool = True) -> Plan:
    """Apply the run's splits and build every sample (json fields + scan references); checks leakage."""
    seed, tasks = cfg.seed, set(cfg.samples.tasks)
    splits = read_splits(cfg.splits)
    trial_split = rest_split = features = None
    novel_categories, novel_stimuli, fewshot, task_fewshot, heldout_captions = [], set(), set(), [], set()
    for tokens in (inputs.task_tokens, inputs.rest_tokens):
        if tokens is not None:
            check_recorded(tokens.tokenizer.get("splits"), splits, f"the tokenizer of {tokens.path}",
                           tokens.path / "manifest.json")
    if inputs.task is not None:
        stimuli = inputs.task.table("stimuli")
        stim_split = splits.stimulus_split(inputs.task)
        novel_stimuli = {i for i, r in enumerate(stimuli) if r.get("novel")}
        novel_categories = list(inputs.task.manifest.get("novel_categories") or sorted(
            {c for r in stimuli if r.get("novel") for c in r.get("categories", [])}))
        subjects = [r["subject"] for r in inputs.task.table("subjects")]
        task_subject_split = np.array(["fewshot" if splits.task_subjects[s] == "heldout" else "train"
                                       for s in subjects], dtype=object)
        task_fewshot = [s for s, sp in zip(subjects, task_subject_split, strict=True) if sp == "fewshot"]
        fewshot |= set(task_fewshot)
        trial_split = trial_splits(inputs.task.array("trial_stimulus"), inputs.task.array("trial_subject"),
                                   stim_split, task_subject_split)
        heldout_captions = {c for r, sp in zip(stimuli, stim_split, strict=True) if sp != "train"
                            for c in r["captions"]}
    if inputs.rest is not None:
        rows = inputs.rest.table("subjects")
        rest_split = splits.rest_split(inputs.rest)
        fewshot |= {r["subject"] for r, sp in zip(rows, rest_split, strict=True) if sp == "fewshot"}
        if {"describe", "text"} & tasks or ("phenotype" in tasks and set(cfg.samples.phenotype_inputs) - {"brain"}):
            tr = float(inputs.rest.manifest["tr"])
            # z-scores and the gradient template from the training subjects only
            features = rest_features(inputs.rest.array("timeseries"), inputs.atlas, tr, cfg.descriptors, seed,
                                     inputs.rest.path, progress, np.flatnonzero(rest_split == "train"))
    builder = SampleBuilder(inputs, cfg.samples, seed, trial_split, rest_split, features,
                            novel_pattern(novel_categories), progress, heldout_captions)
    samples = builder.build()
    check_leakage((s.meta for s in samples), novel_stimuli, novel_categories, fewshot, heldout_captions)
    return Plan(samples, novel_categories, fewshot, builder.dropped_novel, task_fewshot, splits.record(),
                builder.dropped_heldout_captions)


def gather_tokens(inputs: CorpusInputs, scans: tuple) -> np.ndarray:
    """Token rows ``[n_scans, P·L]`` for a sample's scan references."""
    task, rest = inputs.task_tokens, inputs.rest_tokens
    rows = [task.tokens[ref[1]] if ref[0] == "task" else rest.tokens[ref[1], ref[2]] for ref in scans]
    return np.stack(rows) if rows else np.zeros((0, inputs.tokens_per_scan), np.int64)


def build_corpus(cfg: CorpusConfig, out, overwrite: bool = False, progress: bool = True) -> dict:
    """Build the corpus in `out`; return its summary (also written to ``out/corpus.json``).

    Parameters
    ----------
    cfg : CorpusConfig
    out : path
        Corpus directory. If it already holds a corpus, `overwrite` must be True.
    overwrite : bool
    progress : bool
        tqdm progress bars.
    """
    cfg.validate()
    out = Path(out)
    if (out / "corpus.json").exists() and not overwrite:
        raise InputError(out, "out", "already holds a corpus (pass --force / overwrite=True to rebuild)")
    inputs = open_inputs(cfg.task_dataset, cfg.task_tokens, cfg.rest_dataset, cfg.rest_tokens)
    plan = plan_corpus(cfg, inputs, progress)
    extra = {"tokenizer": inputs.tokenizer, "atlas": inputs.atlas.describe(),
             "token_dtype": str(inputs.token_dtype()), "tokens_per_scan": inputs.tokens_per_scan,
             "seed": cfg.seed}
    by_split: dict[str, list[Sample]] = {}
    for s in plan.samples:
        by_split.setdefault(s.split, []).append(s)
    manifests = {}
    bar = tqdm(total=len(plan.samples), desc="writing shards", unit="sample", disable=not progress)
    for split in [s for s in SPLITS if s in by_split]:
        samples = by_split[split]
        order = stream(cfg.seed, "corpus.shard_order", SPLITS.index(split)).permutation(len(samples))
        writer = SplitWriter(out, split, cfg.shards.maxcount, cfg.shards.maxsize, extra)
        for n, i in enumerate(order):
            sample = samples[i]
            writer.write(f"{split}-{sample.task}-{n:08d}", gather_tokens(inputs, sample.scans), sample.record)
            bar.update()
        manifests[split] = writer.close()
    bar.close()
    keep = {sh["name"] for m in manifests.values() for sh in m["shards"]}
    for stale in Path(out).glob("*.manifest.json"):
        if stale.name.split(".")[0] not in manifests:
            stale.unlink()
    remove_stale(out, keep)
    save_config(cfg, out / "config.yaml")
    summary = {
        "splits": {k: {"n_samples": m["n_samples"], "n_shards": len(m["shards"]), "counts": m["counts"],
                       "bytes": sum(sh["bytes"] for sh in m["shards"])} for k, m in manifests.items()},
        "counts": dict(Counter(s.task for s in plan.samples)), "dropped_novel_mentions": plan.dropped_novel,
        "novel_categories": plan.novel_categories, "fewshot_subjects": sorted(plan.fewshot_subjects),
        "task_fewshot_subjects": plan.task_fewshot_subjects, "run_splits": plan.splits,
        "dropped_heldout_caption_texts": plan.dropped_heldout_captions,
        "inputs": {k: v for k, v in to_dict(cfg).items() if k.endswith(("_dataset", "_tokens"))},
        **extra}
    # corpus.json last: its presence marks a complete build
    write_json(out / "corpus.json", corpus_record(summary, out))
    return summary
