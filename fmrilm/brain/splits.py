"""One splits file per run, decided once before stage 1; every later stage reads it and obeys it.

    fmrilm splits --task-dataset runs/demo/task_world --rest-dataset runs/demo/rest_world \
        --out runs/demo/splits/splits.json --set seed=0 val_fraction=0.1

The file (``splits.json``, format ``fmrilm-splits``) maps

- every task stimulus (by its ``key``) to ``train``, ``val`` or ``test``. Stimuli showing a novel
  category are always ``test``: the LM may learn novel words from text, never from a scan;
- every task subject to ``train`` or ``heldout``. Held-out subjects (the last
  ``heldout_task_subjects`` of the dataset) reach no fitted component: tokenizer, corpus training
  samples, LM, brain embedder, retriever, ridge, normalisation statistics. The evaluation adapts to
  them from a few of their scans;
- every rest subject to ``train``, ``val``, ``test`` or ``fewshot``.

It carries its seed, its rules and the sha256 of its canonical content. A stage records that sha256
beside its artifact (:meth:`RunSplits.record`); a stage that combines artifacts compares the
recorded value with its own splits file and refuses a mismatch, naming both
(:func:`fmrilm.artifacts.check_recorded`). A file edited by hand is checked against the datasets it splits:
unknown or missing ids, a key listed twice (two splits for one stimulus), a novel stimulus outside
test and a split without training data are errors naming the file and the ids.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fmrilm.brain.store import Dataset
from fmrilm.errors import InputError
from fmrilm.io import atomic_path
from fmrilm.seeds import stream

FORMAT = "fmrilm-splits"
SPLITS_FILE = "splits.json"
STIMULUS_SPLITS = ("train", "val", "test")
TASK_SUBJECT_SPLITS = ("train", "heldout")
REST_SUBJECT_SPLITS = ("train", "val", "test", "fewshot")


@dataclass
class SplitsConfig:
    """How the splits are drawn (``fmrilm splits``; pipeline stage ``splits``).

    Attributes
    ----------
    task_dataset, rest_dataset : str
        Datasets to split (either may be empty).
    out : str
        The splits file to write.
    seed : int
    val_fraction, test_fraction : float
        Of the task stimuli that show no novel category (novel ones are all test).
    heldout_task_subjects : int
        The last N task subjects, held out of every fitted component.
    rest_val_fraction, rest_test_fraction : float
        Of the rest subjects that are not few-shot.
    rest_fewshot_subjects : int
        Rest subjects held out entirely for few-shot evaluation.
    """

    task_dataset: str = ""
    rest_dataset: str = ""
    out: str = ""
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    heldout_task_subjects: int = 0
    rest_val_fraction: float = 0.1
    rest_test_fraction: float = 0.2
    rest_fewshot_subjects: int = 0

    def validate(self, source: str = "splits config") -> None:
        for name in ("val_fraction", "test_fraction", "rest_val_fraction", "rest_test_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise InputError(source, name, f"{value!r} not in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise InputError(source, "val_fraction + test_fraction", "leaves no training stimuli")
        if self.rest_val_fraction + self.rest_test_fraction >= 1.0:
            raise InputError(source, "rest_val_fraction + rest_test_fraction", "leaves no training subjects")
        for name in ("heldout_task_subjects", "rest_fewshot_subjects"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise InputError(source, name, f"{getattr(self, name)!r} must be an integer >= 0")


def _assign(n: int, fractions: dict, rng: np.random.Generator) -> np.ndarray:
    """Random split names for `n` items: ``round(fraction * n)`` per named split, the rest train."""
    out = np.full(n, "train", dtype=object)
    order = rng.permutation(n)
    start = 0
    for name, fraction in fractions.items():
        count = int(round(fraction * n))
        out[order[start:start + count]] = name
        start += count
    return out


def stimulus_splits(novel: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Split name per stimulus (object array): novel stimuli → test, the others by the fractions."""
    novel = np.asarray(novel, bool)
    out = np.full(novel.size, "test", dtype=object)
    familiar = np.flatnonzero(~novel)
    out[familiar] = _assign(familiar.size, {"test": test_fraction, "val": val_fraction},
                            stream(seed, "splits.stimuli"))
    return out


def subject_splits(n_subjects: int, val: float, test: float, n_fewshot: int, seed: int) -> np.ndarray:
    """Split name per rest subject: `n_fewshot` held out, the remaining split by fractions."""
    rng = stream(seed, "splits.subjects", n_subjects)
    out = np.empty(n_subjects, dtype=object)
    order = rng.permutation(n_subjects)
    out[order[:n_fewshot]] = "fewshot"
    rest = order[n_fewshot:]
    out[rest] = _assign(rest.size, {"test": test, "val": val}, rng)
    return out


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def decide_splits(cfg: SplitsConfig) -> dict:
    """The splits payload for `cfg`'s datasets (deterministic for a seed); see the module docstring."""
    cfg.validate()
    if not cfg.task_dataset and not cfg.rest_dataset:
        raise InputError("splits config", "task_dataset/rest_dataset", "give at least one dataset to split")
    payload = {"format": FORMAT, "version": 1, "seed": int(cfg.seed),
               "rules": {k: v for k, v in asdict(cfg).items() if k not in ("task_dataset", "rest_dataset", "out")}}
    if cfg.task_dataset:
        task = Dataset(cfg.task_dataset, kind="task")
        stimuli, subjects = task.table("stimuli"), [r["subject"] for r in task.table("subjects")]
        if cfg.heldout_task_subjects >= len(subjects):
            raise InputError(task.path / "subjects.jsonl", "heldout_task_subjects",
                             f"{cfg.heldout_task_subjects} of {len(subjects)} subjects leaves none to train on")
        split = stimulus_splits([bool(r.get("novel", False)) for r in stimuli], cfg.val_fraction,
                                cfg.test_fraction, cfg.seed)
        n_train = len(subjects) - cfg.heldout_task_subjects
        payload["task"] = {"stimuli": {r["key"]: str(s) for r, s in zip(stimuli, split, strict=True)},
                           "subjects": {name: "train" if i < n_train else "heldout"
                                        for i, name in enumerate(subjects)}}
    if cfg.rest_dataset:
        rows = Dataset(cfg.rest_dataset, kind="rest").table("subjects")
        if cfg.rest_fewshot_subjects >= len(rows):
            raise InputError(Path(cfg.rest_dataset) / "subjects.jsonl", "rest_fewshot_subjects",
                             f"{cfg.rest_fewshot_subjects} of {len(rows)} subjects leaves none to train on")
        split = subject_splits(len(rows), cfg.rest_val_fraction, cfg.rest_test_fraction,
                               cfg.rest_fewshot_subjects, cfg.seed)
        payload["rest"] = {"subjects": {r["subject"]: str(s) for r, s in zip(rows, split, strict=True)}}
    return payload


def write_splits(payload: dict, path) -> Path:
    """Write `payload` with its sha256 atomically; returns the path."""
    path = Path(path)
    body = {k: v for k, v in payload.items() if k != "sha256"}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({**body, "sha256": _digest(body)}, indent=1) + "\n")
    return path


def _no_duplicate_keys(source):
    def hook(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise InputError(source, key, f"listed twice ({seen[key]!r} and {value!r}): one split per id")
            seen[key] = value
        return seen
    return hook


@dataclass
class RunSplits:
    """A checked splits file.

    Attributes
    ----------
    path : Path
    sha256 : str
        Of the canonical content; what stages record and compare.
    seed : int
    stimuli : dict
        Stimulus key → ``train`` / ``val`` / ``test`` (empty without task data).
    task_subjects, rest_subjects : dict
        Subject id → split.
    """

    path: Path
    sha256: str
    seed: int
    stimuli: dict
    task_subjects: dict
    rest_subjects: dict

    def record(self) -> dict:
        """What an artifact stores of the splits it was built on."""
        return {"path": str(self.path), "sha256": self.sha256}

    def stimulus_split(self, task: Dataset) -> np.ndarray:
        """Split name per stimulus row of `task` (object array), after :meth:`check_task`."""
        self.check_task(task)
        return np.array([self.stimuli[r["key"]] for r in task.table("stimuli")], dtype=object)

    def stimulus_indices(self, task: Dataset, split: str) -> np.ndarray:
        """Row indices (ascending) of the stimuli of `task` in `split`."""
        return np.flatnonzero(self.stimulus_split(task) == split).astype(np.int64)

    def task_subject_indices(self, task: Dataset, split: str = "train") -> np.ndarray:
        """Row indices of the task subjects in `split` (``train`` or ``heldout``)."""
        self.check_task(task)
        return np.array([i for i, r in enumerate(task.table("subjects"))
                         if self.task_subjects[r["subject"]] == split], np.int64)

    def heldout_task_subjects(self) -> list[str]:
        return [s for s, split in self.task_subjects.items() if split == "heldout"]

    def rest_split(self, rest: Dataset) -> np.ndarray:
        """Split name per rest subject row of `rest` (object array)."""
        rows = rest.table("subjects")
        names = [r["subject"] for r in rows]
        _same_ids(self.path, "rest.subjects", set(self.rest_subjects), names, rest.path / "subjects.jsonl")
        return np.array([self.rest_subjects[n] for n in names], dtype=object)

    def check_task(self, task: Dataset) -> None:
        """InputError unless the file splits exactly `task`'s stimuli and subjects, novel ones in test."""
        stimuli = task.table("stimuli")
        _same_ids(self.path, "task.stimuli", set(self.stimuli), [r["key"] for r in stimuli],
                  task.path / "stimuli.jsonl")
        _same_ids(self.path, "task.subjects", set(self.task_subjects),
                  [r["subject"] for r in task.table("subjects")], task.path / "subjects.jsonl")
        misplaced = [r["key"] for r in stimuli if r.get("novel") and self.stimuli[r["key"]] != "test"]
        if misplaced:
            raise InputError(self.path, "task.stimuli", f"{len(misplaced)} novel-category stimuli outside test "
                             f"(e.g. {misplaced[:5]}): a novel category must never reach training or selection")


def _same_ids(path, field: str, listed: set, ids: list, data_source) -> None:
    unknown, missing = sorted(listed - set(ids)), [i for i in ids if i not in listed]
    if unknown or missing:
        raise InputError(path, field, f"does not match {data_source}: {len(unknown)} unknown id(s) {unknown[:5]}, "
                         f"{len(missing)} missing {missing[:5]}")


def read_splits(path) -> RunSplits:
    """Open and check a splits file (format, sha256, split names, training data present)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "no splits file here (write one with `fmrilm splits` or the pipeline)")
    try:
        data = json.loads(path.read_text(), object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as err:
        raise InputError(path, "json", f"not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(path, "format", f"expected {FORMAT!r}")
    body = {k: v for k, v in data.items() if k != "sha256"}
    if data.get("sha256") != _digest(body):
        raise InputError(path, "sha256", "does not match the content: the file was edited after it was written "
                         "(rewrite it with `fmrilm splits`, or recompute its sha256)")
    task, rest = data.get("task") or {}, data.get("rest") or {}
    for field, mapping, allowed in (("task.stimuli", task.get("stimuli", {}), STIMULUS_SPLITS),
                                    ("task.subjects", task.get("subjects", {}), TASK_SUBJECT_SPLITS),
                                    ("rest.subjects", rest.get("subjects", {}), REST_SUBJECT_SPLITS)):
        bad = sorted(k for k, v in mapping.items() if v not in allowed)
        if bad:
            raise InputError(path, field, f"unknown split for {bad[:5]}; allowed: {list(allowed)}")
        if mapping and "train" not in mapping.values():
            raise InputError(path, field, "nothing in train")
    return RunSplits(path, data["sha256"], int(data.get("seed", 0)), dict(task.get("stimuli", {})),
                     dict(task.get("subjects", {})), dict(rest.get("subjects", {})))


def write_run_splits(cfg: SplitsConfig, overwrite: bool = False) -> Path:
    """Decide and write the splits file `cfg.out` (refuses to replace one unless `overwrite`)."""
    if not cfg.out:
        raise InputError("splits config", "out", "no output file given")
    if Path(cfg.out).exists() and not overwrite:
        raise InputError(cfg.out, "out", "already exists (pass --force to replace it)")
    return write_splits(decide_splits(cfg), cfg.out)
