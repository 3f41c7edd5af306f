"""Leak-free splits: task data by stimulus, rest data by subject, plus held-out few-shot subjects.

Rules (checked again on the finished sample list by :func:`check_leakage`):

- a stimulus has one split, so all its repeats and all subjects' trials of it go together;
- stimuli showing a novel category are test-only, and no brain–text training sample names a novel
  category (text-only samples may: the LM must know the words);
- held-out few-shot subjects appear only in the ``fewshot`` split, and other subjects never do;
  held-out *task* subjects are the last ones of the dataset, the same subjects the tokenizer's
  ``heldout_task_subjects`` leaves out of its training.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np


class LeakageError(RuntimeError):
    """A finished sample list violates a split rule (a bug in the builder, not bad input)."""


@dataclass
class SplitConfig:
    """Split fractions and held-out subjects.

    Attributes
    ----------
    val_fraction, test_fraction : float
        Of the task stimuli that show no novel category (novel ones all go to test).
    rest_val_fraction, rest_test_fraction : float
        Of the rest subjects that are not held out for few-shot.
    rest_fewshot_subjects, task_fewshot_subjects : int
        Subjects held out entirely, into the ``fewshot`` split.
    """

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    rest_val_fraction: float = 0.1
    rest_test_fraction: float = 0.2
    rest_fewshot_subjects: int = 2
    task_fewshot_subjects: int = 0


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


def stimulus_splits(novel: np.ndarray, cfg: SplitConfig, seed: int) -> np.ndarray:
    """Split name per stimulus (object array): novel stimuli → test, the others by the fractions."""
    novel = np.asarray(novel, bool)
    out = np.full(novel.size, "test", dtype=object)
    familiar = np.flatnonzero(~novel)
    out[familiar] = _assign(familiar.size, {"test": cfg.test_fraction, "val": cfg.val_fraction},
                            np.random.default_rng([seed, 1]))
    return out


def subject_splits(n_subjects: int, val: float, test: float, n_fewshot: int, seed: int) -> np.ndarray:
    """Split name per subject: `n_fewshot` held out, the remaining split by fractions."""
    rng = np.random.default_rng([seed, 2, n_subjects])
    out = np.empty(n_subjects, dtype=object)
    order = rng.permutation(n_subjects)
    out[order[:n_fewshot]] = "fewshot"
    rest = order[n_fewshot:]
    out[rest] = _assign(rest.size, {"test": test, "val": val}, rng)
    return out


def last_subjects_fewshot(n_subjects: int, n_fewshot: int) -> np.ndarray:
    """Split per task subject: the last `n_fewshot` are ``fewshot``, the others ``train``.

    Task data are split by stimulus, not by subject, so only the held-out subjects need a name;
    taking the last ones matches the subjects the tokenizer stage leaves out.
    """
    out = np.full(n_subjects, "train", dtype=object)
    out[n_subjects - n_fewshot:] = "fewshot"  # an empty slice when n_fewshot is 0
    return out


def trial_splits(trial_stimulus: np.ndarray, trial_subject: np.ndarray, stim_split: np.ndarray,
                 subject_split: np.ndarray) -> np.ndarray:
    """Split per trial: the stimulus's split, or ``fewshot`` for held-out subjects."""
    out = stim_split[np.asarray(trial_stimulus)].copy()
    out[subject_split[np.asarray(trial_subject)] == "fewshot"] = "fewshot"
    return out


def novel_pattern(categories) -> re.Pattern | None:
    """Case-insensitive whole-word pattern matching any category name (plural -s/-es included)."""
    words = sorted({c.strip().lower() for c in categories if c and c.strip()}, key=len, reverse=True)
    if not words:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")(?:s|es)?\b", re.IGNORECASE)


def mentions(pattern: re.Pattern | None, *texts: str) -> bool:
    return pattern is not None and any(pattern.search(t or "") for t in texts)


def check_leakage(metas, novel_stimuli: set, novel_categories, fewshot_subjects: set) -> None:
    """Raise LeakageError listing the first violations of the split rules in sample metadata.

    Parameters
    ----------
    metas : iterable of dict
        Sample json fields (``task``, ``split``, ``subject``, ``stimulus``, ``prompt``, ``answer``,
        ``shots``).
    novel_stimuli : set of int
        Stimulus indices showing a novel category.
    novel_categories : list of str
    fewshot_subjects : set of str
        Subject ids held out for few-shot.
    """
    pattern = novel_pattern(novel_categories)
    splits_of = defaultdict(set)
    problems = []
    for m in metas:
        if m["task"] == "text":
            continue
        split = m["split"]
        stimuli = [m["stimulus"]] + [s.get("stimulus") for s in m.get("shots", [])]
        subjects = [m["subject"]] + [s.get("subject") for s in m.get("shots", [])]
        for stim in stimuli:
            if stim is not None:
                splits_of[stim].add(split)
        if split == "train":
            if any(s in novel_stimuli for s in stimuli if s is not None):
                problems.append(f"novel stimulus in a training sample: {m['task']} {stimuli}")
            if mentions(pattern, m["prompt"], m["answer"], *[s["answer"] for s in m.get("shots", [])]):
                problems.append(f"novel category named in a training sample: {m['prompt']!r} {m['answer']!r}")
        for subj in subjects:
            if (subj in fewshot_subjects) != (split == "fewshot"):
                problems.append(f"subject {subj} in split {split} "
                                f"(held out for few-shot: {subj in fewshot_subjects})")
    for stim, splits in splits_of.items():
        if len(splits - {"fewshot"}) > 1:
            problems.append(f"stimulus {stim} in several splits {sorted(splits)}")
    if problems:
        raise LeakageError(f"{len(problems)} split violations, e.g. " + "; ".join(problems[:5]))
