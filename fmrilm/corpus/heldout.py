"""The held-out set of a run: its splits as the corpus was built on them, and the scored split's samples.

Evaluation must only use what training never saw, so the test set comes from the run's splits file
(:mod:`fmrilm.brain.splits`), the one the corpus was built on (its sha256 is checked): the ``test``
stimuli (novel-category stimuli are all there) and, for rest data, the corpus's ``test``-split
samples. Training items for the linear baselines and the retrieval heads are the ``train`` stimuli
of the ``train`` task subjects; held-out subjects are scored only where a section says so. Task
items follow the NSD convention: one item per (subject, stimulus), the repeats averaged
(:meth:`fmrilm.brain.task_data.TaskData.mean_betas`). Read by the evaluation, the retrieval stage's
search indexes and the stimulation experiment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmrilm.artifacts import check_recorded, read_corpus_record
from fmrilm.brain.splits import read_splits
from fmrilm.brain.store import Dataset
from fmrilm.corpus.reader import read_split
from fmrilm.errors import InputError


@dataclass
class HeldOut:
    """Splits of a corpus, as the evaluation (and everything scored or fitted on its splits) needs them.

    Attributes
    ----------
    corpus : Path
    summary : dict
        ``corpus.json``.
    splits : RunSplits
    test_stimuli, train_stimuli : ndarray of int
        Task stimuli of the test and train splits (ascending).
    test_samples : list of dict
        Decoded samples (``{"tokens.npy", "json", ...}``) of rest tasks in the scored split.
    untrained_rest_subjects : set of str
        Rest subjects outside the train split (val, test, few-shot): no baseline trains on them.
    split : str
        The scored split: ``test`` (the report, once per run) or ``val`` (choosing recipes); the
        ``test_*`` fields then hold that split's stimuli and samples.
    """

    corpus: Path
    summary: dict
    splits: object
    test_stimuli: np.ndarray
    train_stimuli: np.ndarray
    test_samples: list
    untrained_rest_subjects: set
    split: str = "test"

    def input_path(self, key: str) -> Path | None:
        """A corpus input (``task_dataset``, ``rest_dataset``, ...) as recorded in ``corpus.json``."""
        value = self.summary.get("inputs", {}).get(key)
        return Path(value) if value else None


def _split_samples(corpus: Path, split: str) -> list[dict]:
    if not (corpus / f"{split}.manifest.json").is_file():
        return []
    samples, counter = read_split(corpus, split, ("caption", "vqa", "describe", "phenotype", "temporal"),
                                  progress=False)
    if counter.shards:
        raise InputError(corpus, split, f"{counter.shards} unreadable shard(s): the held-out set would be incomplete")
    return samples


def load_heldout(corpus, splits=None, split: str = "test") -> HeldOut:
    """Read the run's splits and the corpus's samples of the scored split (shards checked against their sha256).

    Parameters
    ----------
    corpus : path
    splits : path, optional
        The run's splits file; default: the one ``corpus.json`` records. Either way its sha256 must be
        the corpus's.
    split : {"test", "val"}
        What is scored: recipes are chosen on ``val``; ``test`` is scored once per run.
    """
    corpus = Path(corpus)
    summary = read_corpus_record(corpus)
    recorded = summary.get("run_splits")
    if splits is None and not recorded:
        raise InputError(corpus / "corpus.json", "splits", "the corpus records no splits file (rebuild it)")
    run_splits = read_splits(splits or recorded["path"])
    check_recorded(recorded, run_splits, f"the corpus {corpus}", corpus / "corpus.json")
    if split not in ("test", "val"):
        raise InputError("evaluation config", "split", f"{split!r}: score 'val' (recipe choices) or 'test' (report)")
    test = _split_samples(corpus, split)
    if not test:
        raise InputError(corpus, split, f"the corpus has no {split} split")
    test_stim = train = np.zeros(0, np.int64)
    task_path = summary.get("inputs", {}).get("task_dataset")
    if task_path:
        task = Dataset(task_path, kind="task")
        test_stim, train = run_splits.stimulus_indices(task, split), run_splits.stimulus_indices(task, "train")
    rest_test = [s for s in test if s["json"].get("source") == "rest"]
    untrained = {s for s, name in run_splits.rest_subjects.items() if name != "train"}
    return HeldOut(corpus, summary, run_splits, test_stim, train, rest_test, untrained, split)
