"""Turn task and rest datasets into tokenizer batches ``{"x": [B, P, D], "text": [B, 384]}``.

- **Task** datasets (kind ``"task"``): each trial's z-scored betas ``[V]`` grouped per parcel
  (``D = atlas.vmax``, mask from the atlas). Text = MiniLM embedding of the stimulus's first
  caption, embedded once per stimulus. The run's splits file decides: training scans are the train
  stimuli of train subjects, held-out figures come from their val stimuli; test stimuli and held-out
  subjects are never read.
- **Rest** datasets (kind ``"rest"``): each subject's parcel time series z-scored per parcel, cut
  into non-overlapping windows of W TRs (``D = W``, mask all true). Text = a one-line description
  of the subject's phenotype where known (none for a real run with unknown phenotype). Training
  windows are the train subjects', held-out ones the val subjects'.

Scan sets are views: indices into memory-mapped arrays, grouped a batch at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from fmrilm.brain.store import Dataset
from fmrilm.errors import InputError, check_finite
from fmrilm.textembed import embed_texts


def dataset_atlas(info: dict, source):
    """Rebuild the ``Atlas`` a dataset's manifest names (Schaefer scales on fsaverage5)."""
    from fmrilm.brain.atlas import Atlas

    match = re.fullmatch(r"schaefer(\d+)_fsaverage5", str(info.get("name")))
    if not match:
        raise InputError(source, "atlas.name",
                         f"{info.get('name')!r}: only schaefer<N>_fsaverage5 can be rebuilt")
    atlas = Atlas.schaefer(int(match.group(1)))
    atlas.check_same(info, source)
    return atlas


def zscore_time(series: np.ndarray) -> np.ndarray:
    """Z-score ``[..., T, P]`` over time per parcel; constant parcels become 0."""
    centred = series - series.mean(-2, keepdims=True)
    std = centred.std(-2, keepdims=True)
    return (centred / np.where(std > 0, std, 1.0)).astype(np.float32)


def rest_windows(timeseries: np.ndarray, window: int, source="timeseries") -> np.ndarray:
    """``[S, T, P]`` → z-scored non-overlapping windows ``[S, T // W, P, W]`` (trailing TRs dropped)."""
    n_windows = timeseries.shape[1] // window
    if n_windows < 1:
        raise InputError(source, "n_timepoints",
                         f"{timeseries.shape[1]} TRs, fewer than one window of {window}")
    z = zscore_time(np.asarray(timeseries, np.float32))[:, : n_windows * window]
    s, _, p = z.shape
    return np.ascontiguousarray(z.reshape(s, n_windows, window, p).transpose(0, 1, 3, 2))


def phenotype_text(row: dict) -> str | None:
    """'A resting-state scan of a 63-year-old female control participant.' (None if nothing is known)."""
    age, sex, diagnosis = row.get("age"), row.get("sex"), row.get("diagnosis")
    if age is None and sex is None and diagnosis is None:
        return None
    words = [f"{round(age)}-year-old" if age is not None else None,
             {"F": "female", "M": "male"}.get(sex), diagnosis, "participant"]
    return "A resting-state scan of a " + " ".join(w for w in words if w) + "."


@dataclass
class ScanSet:
    """A split of a dataset: `rows` index the dataset's scans; `group` makes ``[B, P, D]`` from rows.

    Attributes
    ----------
    rows : ndarray of int
    text : ndarray, shape (n_texts, 384), or None
        Text embeddings; ``text_index[row]`` selects the one of each scan.
    """

    source: str
    rows: np.ndarray
    scans: object  # [N, V] betas (task) or [N, P, W] windows (rest)
    grouper: object  # callable turning scans[rows] into a [B, P, D] tensor
    text: np.ndarray | None
    text_index: np.ndarray | None

    def __len__(self) -> int:
        return int(self.rows.size)

    def batch(self, positions) -> dict[str, torch.Tensor]:
        """The scans at `positions` (indices into this split) as a model batch."""
        rows = self.rows[np.asarray(positions)]
        order = np.argsort(rows)  # memmap reads are fastest in file order
        values = np.asarray(self.scans[rows[order]], np.float32)
        check_finite(values, self.source, "scans")
        x = self.grouper(values)
        inverse = np.argsort(order)
        out = {"x": x[torch.from_numpy(inverse)]}
        if self.text is not None:
            out["text"] = torch.from_numpy(self.text[self.text_index[rows]])
        return out

    def batches(self, batch_size: int):
        """All scans in order, `batch_size` at a time."""
        for start in range(0, len(self), batch_size):
            yield self.batch(np.arange(start, min(start + batch_size, len(self))))


def all_scans(path, tokenizer) -> ScanSet:
    """Every scan of a task or rest dataset in dataset order (no text), held-out subjects included.

    What tokenizing a whole dataset needs; training uses :func:`load_splits`.
    """
    return load_splits(path, tokenizer, None, with_text=False)[0]


def load_splits(path, tokenizer, splits=None, with_text: bool = True):
    """Train and held-out :class:`ScanSet` of a task or rest dataset, checked against `tokenizer`.

    Parameters
    ----------
    path : path
        Dataset directory (manifest kind ``task`` or ``rest``).
    tokenizer : BrainTokenizer
        Supplies the layout (vertex grouping or window length) and the atlas to check against.
    splits : RunSplits or None
        The run's splits (:mod:`fmrilm.brain.splits`). Task data: train = trials of ``train`` stimuli
        by ``train`` subjects, held out = their trials of ``val`` stimuli (test stimuli and held-out
        subjects are in neither). Rest data: the windows of ``train`` / ``val`` subjects. None: every
        scan in the first set, an empty second one.
    with_text : bool
        Embed captions / descriptions for the contrastive loss.
    """
    from fmrilm.tokenizer.model import check_atlas

    ds = Dataset(path)
    check_atlas(tokenizer.atlas_info, ds.atlas_info, ds.path / "manifest.json")
    if ds.kind != tokenizer.cfg.input:
        raise InputError(ds.path / "manifest.json", "kind",
                         f"{ds.kind!r} dataset, tokenizer reads {tokenizer.cfg.input!r}")
    if ds.kind == "task":
        return _task_splits(ds, tokenizer, splits, with_text)
    return _rest_splits(ds, tokenizer, splits, with_text)


def training_record(path, splits) -> dict:
    """What a tokenizer trained on `path` under `splits` saw (stored in its ``config.json``)."""
    ds = Dataset(path)
    record = {"dataset": str(ds.path.resolve()), "splits": splits.record()}
    if ds.kind == "task":
        keys = [r["key"] for r in ds.table("stimuli")]
        record.update(train_stimuli=[keys[i] for i in splits.stimulus_indices(ds, "train")],
                      train_subjects=[s for s, split in splits.task_subjects.items() if split == "train"])
    else:
        record.update(train_subjects=[s for s, split in splits.rest_subjects.items() if split == "train"])
    return record


def _task_splits(ds: Dataset, tokenizer, splits, with_text):
    betas = ds.array("betas")
    stimulus = np.asarray(ds.array("trial_stimulus"), np.int64)
    subject = np.asarray(ds.array("trial_subject"), np.int64)
    text = None
    if with_text:
        stimuli = ds.table("stimuli")
        text = embed_texts([row["captions"][0] for row in stimuli], progress=len(stimuli) > 2000)

    def group(values):
        return tokenizer.group_vertices(values, ds.path / "betas.npy")

    def split(rows):
        return ScanSet(str(ds.path), rows, betas, group, text, stimulus)

    if splits is None:
        return split(np.arange(stimulus.size)), split(np.zeros(0, np.int64))
    seen = np.isin(subject, splits.task_subject_indices(ds, "train"))
    stim_split = splits.stimulus_split(ds)[stimulus]
    return split(np.flatnonzero(seen & (stim_split == "train"))), split(np.flatnonzero(seen & (stim_split == "val")))


def _rest_splits(ds: Dataset, tokenizer, splits, with_text):
    series = np.asarray(ds.array("timeseries"), np.float32)
    check_finite(series, ds.path / "timeseries.npy")
    if series.shape[-1] != tokenizer.n_parcels:
        raise InputError(ds.path / "timeseries.npy", "parcels",
                         f"{series.shape[-1]}, tokenizer has {tokenizer.n_parcels}")
    windows = rest_windows(series, tokenizer.width, ds.path / "timeseries.npy")
    n_subjects, n_windows = windows.shape[:2]
    flat = windows.reshape(n_subjects * n_windows, *windows.shape[2:])
    subject_split = (np.full(n_subjects, "train", dtype=object) if splits is None else splits.rest_split(ds))
    window_split = np.repeat(subject_split, n_windows)
    text, text_index = None, None
    descriptions = [phenotype_text(row) for row in ds.table("subjects")]
    if with_text and all(d is not None for d in descriptions):
        text, text_index = embed_texts(descriptions), np.repeat(np.arange(n_subjects), n_windows)

    def split(rows):
        return ScanSet(str(ds.path), rows, flat, torch.from_numpy, text, text_index)

    return split(np.flatnonzero(window_split == "train")), split(np.flatnonzero(window_split == "val"))


def tokenizer_for_dataset(cfg, path, sync_codebook: bool = False):
    """A fresh :class:`BrainTokenizer` whose input layout fits the dataset at `path`."""
    from fmrilm.tokenizer.model import BrainTokenizer

    ds = Dataset(path)
    if ds.kind != cfg.input:
        raise InputError(ds.path / "manifest.json", "kind",
                         f"{ds.kind!r} dataset, config tokenizer.input is {cfg.input!r}")
    if ds.kind == "task":
        atlas = dataset_atlas(ds.atlas_info, ds.path / "manifest.json")
        return BrainTokenizer.for_atlas(cfg, atlas, sync_codebook)
    mask = np.ones((ds.atlas_info["n_parcels"], cfg.window), bool)
    return BrainTokenizer(cfg, ds.atlas_info, mask, None, sync_codebook)
