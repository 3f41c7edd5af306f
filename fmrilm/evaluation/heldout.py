"""The held-out evaluation set of a run and the artifacts that score it.

Evaluation must only use what training never saw, so the test set is read from the corpus itself:
the stimuli of its ``test`` split (novel-category stimuli are all there) and, for rest data, the
subjects of its ``test`` split. Training items for the linear baselines and the retrieval head are
the stimuli of neither ``test`` nor ``val``. Task items follow the NSD convention: one item per
(subject, stimulus), the repeats averaged (:meth:`fmrilm.brain.task_data.TaskData.mean_betas`).

Artifact directories may be given directly or as a stage's parent directory (``runs/demo/instruct``
holding one ``stage3_instruct-*`` export; ``runs/demo/tokenizer`` holding one ``tokenizer_*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fmrilm.errors import InputError
from fmrilm.io import read_json


def resolve_artifact(path, marker: str, pattern: str, what: str) -> Path:
    """`path` itself if it holds `marker`, else its single newest child matching `pattern` that does."""
    path = Path(path)
    if (path / marker).is_file():
        return path
    found = sorted(p for p in path.glob(pattern) if (p / marker).is_file()) if path.is_dir() else []
    if not found:
        raise InputError(path, what, f"no {marker} here nor in a {pattern} subdirectory")
    # Export names end in the step number (step000300), so the last in sorted order is the newest.
    return found[-1]


def resolve_model_dir(path) -> Path:
    """A BrainLM directory (``brainlm.json``), given it or the stage directory holding exports."""
    return resolve_artifact(path, "brainlm.json", "stage3_instruct-*", "model")


def resolve_tokenizer_dir(path) -> Path:
    """A brain tokenizer directory (``config.json`` + weights), given it or its stage directory."""
    return resolve_artifact(path, "model.safetensors", "tokenizer_*", "tokenizer")


@torch.no_grad()
def tokenize_betas(tokenizer, betas: np.ndarray, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Vertex maps ``[N, V]`` → token ids ``[N, P·L]`` (int64) with a task tokenizer."""
    out = []
    for start in tqdm(range(0, len(betas), batch_size), desc="tokenize", disable=not progress):
        out.append(tokenizer.encode(tokenizer.group_vertices(betas[start:start + batch_size])).numpy())
    return np.concatenate(out).astype(np.int64)


@dataclass
class HeldOut:
    """Splits of a corpus, as the evaluation needs them.

    Attributes
    ----------
    corpus : Path
    summary : dict
        ``corpus.json``.
    test_stimuli, train_stimuli : ndarray of int
        Task stimuli of the test split, and of neither test nor val (ascending).
    test_samples : list of dict
        Decoded test-split samples (``{"tokens.npy", "json", ...}``) of rest tasks.
    val_subjects : set of str
        Rest subjects of the val split.
    """

    corpus: Path
    summary: dict
    test_stimuli: np.ndarray
    train_stimuli: np.ndarray
    test_samples: list
    val_subjects: set

    def input_path(self, key: str) -> Path | None:
        """A corpus input (``task_dataset``, ``rest_dataset``, ...) as recorded in ``corpus.json``."""
        value = self.summary.get("inputs", {}).get(key)
        return Path(value) if value else None


def _split_samples(corpus: Path, split: str) -> list[dict]:
    from fmrilm.stages.lm_common import read_split

    if not (corpus / f"{split}.manifest.json").is_file():
        return []
    samples, counter = read_split(corpus, split, ("caption", "vqa", "describe", "phenotype", "temporal"),
                                  progress=False)
    if counter.shards:
        raise InputError(corpus, split, f"{counter.shards} unreadable shard(s): the held-out set would be incomplete")
    return samples


def load_heldout(corpus) -> HeldOut:
    """Read the corpus's ``test`` and ``val`` splits (shards checked against their sha256)."""
    corpus = Path(corpus)
    summary = read_json(corpus / "corpus.json")
    test, val = _split_samples(corpus, "test"), _split_samples(corpus, "val")
    if not test:
        raise InputError(corpus, "test", "the corpus has no test split")

    def stimuli(samples):
        return {s["json"]["stimulus"] for s in samples if s["json"].get("source") == "task"}

    test_stim, val_stim = stimuli(test), stimuli(val)
    n_stimuli = None
    task_path = summary.get("inputs", {}).get("task_dataset")
    if task_path:
        from fmrilm.brain.store import Dataset

        n_stimuli = int(Dataset(task_path, kind="task").manifest["n_stimuli"])
    train = np.array(sorted(set(range(n_stimuli or 0)) - test_stim - val_stim), np.int64)
    rest_test = [s for s in test if s["json"].get("source") == "rest"]
    val_subjects = {s["json"]["subject"] for s in val if s["json"].get("source") == "rest"}
    return HeldOut(corpus, summary, np.array(sorted(test_stim), np.int64), train, rest_test, val_subjects)
