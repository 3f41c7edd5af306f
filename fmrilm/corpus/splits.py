"""The run's splits applied to corpus samples, and the leakage check on the finished sample list.

The splits themselves are decided once per run (:mod:`fmrilm.brain.splits`). Rules checked again
on the finished samples by :func:`check_leakage`:

- a stimulus has one split, so all its repeats and all subjects' trials of it go together;
- stimuli showing a novel category are test-only, and no brain–text training sample names a novel
  category (text-only samples may: the LM must know the words, from text-only scenes);
- no training text is the caption of a test stimulus;
- held-out subjects appear only in the ``fewshot`` split, and other subjects never do.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np


class LeakageError(RuntimeError):
    """A finished sample list violates a split rule (a bug in the builder, not bad input)."""


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


def check_leakage(metas, novel_stimuli: set, novel_categories, fewshot_subjects: set,
                  test_captions: set = frozenset()) -> None:
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
    test_captions : set of str
        Captions of the test stimuli: none may be a training text.
    """
    pattern = novel_pattern(novel_categories)
    splits_of = defaultdict(set)
    problems = []
    for m in metas:
        if m["task"] == "text":
            if m["split"] == "train" and m["answer"] in test_captions:
                problems.append(f"test caption in the training text: {m['answer']!r}")
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
