"""The corpus's inputs, opened and checked before anything is written.

A corpus reads a task dataset and/or a rest dataset (``fmrilm world task|rest`` or an importer) and,
for each, the tokens dataset ``fmrilm tokenizer encode`` wrote for it (manifest kind ``tokens``,
array ``tokens``: ``[N_trials, P·L]`` for task data, ``[S, n_windows, P·L]`` for rest data; manifest
extra ``tokenizer`` with ``name``, ``codebook_size``, ``levels``, ``fingerprint`` and ``atlas``).
The corpus never imports the tokenizer: it only checks that the tokens belong to the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmrilm.brain.atlas import Atlas
from fmrilm.brain.store import Dataset
from fmrilm.errors import InputError

TOKENIZER_FIELDS = ("name", "codebook_size", "levels", "fingerprint", "atlas")


@dataclass
class TokenSet:
    """One tokens dataset: the token array (memory-mapped) and its tokenizer identity."""

    path: Path
    tokens: np.ndarray
    tokenizer: dict

    @property
    def tokens_per_scan(self) -> int:
        return int(self.tokens.shape[-1])


@dataclass
class CorpusInputs:
    """Checked inputs: the atlas, task and/or rest dataset, and their tokens."""

    atlas: Atlas
    task: Dataset | None
    task_tokens: TokenSet | None
    rest: Dataset | None
    rest_tokens: TokenSet | None

    @property
    def tokenizer(self) -> dict:
        return (self.task_tokens or self.rest_tokens).tokenizer

    @property
    def tokens_per_scan(self) -> int:
        return (self.task_tokens or self.rest_tokens).tokens_per_scan

    def token_dtype(self) -> np.dtype:
        """Smallest unsigned dtype holding every token id of the corpus."""
        top = max(int(ts.tokens.max()) if ts.tokens.size else 0
                  for ts in (self.task_tokens, self.rest_tokens) if ts is not None)
        for dtype in (np.uint8, np.uint16, np.uint32):
            if top <= np.iinfo(dtype).max:
                return np.dtype(dtype)
        return np.dtype(np.uint64)


def _open_tokens(path, data: Dataset, atlas: Atlas, expect_leading: tuple) -> TokenSet:
    """Open a tokens dataset and check it against the data it claims to encode."""
    ds = Dataset(path, kind="tokens")
    manifest = ds.path / "manifest.json"
    tokenizer = ds.manifest.get("tokenizer")
    if not isinstance(tokenizer, dict) or any(k not in tokenizer for k in TOKENIZER_FIELDS):
        raise InputError(manifest, "tokenizer", f"missing or incomplete (needs {list(TOKENIZER_FIELDS)})")
    # the tokenizer was trained on one atlas: its tokens mean nothing for data on another
    atlas.check_same(tokenizer["atlas"], f"{manifest} (tokenizer vs data {data.path})")
    if ds.manifest.get("source_kind") not in (None, data.kind):
        raise InputError(manifest, "source_kind",
                         f"{ds.manifest['source_kind']!r} tokens for a {data.kind!r} dataset")
    tokens = ds.array("tokens")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise InputError(ds.path / "tokens.npy", "dtype", f"{tokens.dtype}, expected an integer dtype")
    if tokens.shape[:-1] != expect_leading:
        raise InputError(ds.path / "tokens.npy", "shape",
                         f"{tokens.shape}: leading axes must be {expect_leading} to match {data.path}")
    per_scan = atlas.n_parcels * int(tokenizer["levels"])
    if tokens.shape[-1] != per_scan:
        raise InputError(ds.path / "tokens.npy", "shape", f"{tokens.shape[-1]} tokens per scan, expected "
                         f"P·L = {atlas.n_parcels}·{tokenizer['levels']} = {per_scan}")
    # vocab_size: every brain id of the LM vocabulary (a rest companion's patch codes follow the task codes)
    vocab = int(tokenizer.get("vocab_size") or int(tokenizer["codebook_size"]) * int(tokenizer["levels"]))
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise InputError(ds.path / "tokens.npy", "values",
                         f"ids in [{tokens.min()}, {tokens.max()}], outside the tokenizer's [0, {vocab})")
    return TokenSet(ds.path, tokens, tokenizer)


def _check_task(ds: Dataset) -> None:
    n = ds.manifest["arrays"].get("betas", {}).get("shape", [None])[0]
    for name in ("betas", "trial_stimulus", "trial_subject"):
        shape = ds.manifest["arrays"].get(name, {}).get("shape")
        if shape is None:
            raise InputError(ds.path, "arrays", f"task dataset lacks {name!r}")
        if shape[0] != n:
            raise InputError(ds.path / f"{name}.npy", "shape", f"{shape[0]} rows, betas has {n} trials")


def _check_rest(ds: Dataset, atlas: Atlas) -> None:
    shape = ds.manifest["arrays"].get("timeseries", {}).get("shape")
    if shape is None or len(shape) != 3 or shape[2] != atlas.n_parcels:
        raise InputError(ds.path, "timeseries", f"shape {shape}, expected [S, T, {atlas.n_parcels}]")
    tr = ds.manifest.get("tr")
    if not isinstance(tr, (int, float)) or tr <= 0:
        raise InputError(ds.path / "manifest.json", "tr", f"{tr!r}, expected a positive number of seconds")
    if len(ds.table("subjects")) != shape[0]:
        raise InputError(ds.path / "subjects.jsonl", "rows",
                         f"{len(ds.table('subjects'))} rows, {shape[0]} subjects")


def open_inputs(task_dataset=None, task_tokens=None, rest_dataset=None, rest_tokens=None) -> CorpusInputs:
    """Open and cross-check the corpus inputs; every problem is an InputError naming file and field."""
    if (task_dataset is None) != (task_tokens is None) or (rest_dataset is None) != (rest_tokens is None):
        raise InputError("corpus config", "task_tokens/rest_tokens", "each dataset needs its tokens dataset")
    if task_dataset is None and rest_dataset is None:
        raise InputError("corpus config", "task_dataset/rest_dataset", "give at least one dataset")
    task = Dataset(task_dataset, kind="task") if task_dataset is not None else None
    rest = Dataset(rest_dataset, kind="rest") if rest_dataset is not None else None
    first = task or rest
    atlas = Atlas.schaefer(int(first.atlas_info["n_parcels"]))
    for ds in (task, rest):
        if ds is not None:
            atlas.check_same(ds.atlas_info, ds.path / "manifest.json")
    tt = rt = None
    if task is not None:
        _check_task(task)
        tt = _open_tokens(task_tokens, task, atlas, (task.manifest["arrays"]["betas"]["shape"][0],))
    if rest is not None:
        _check_rest(rest, atlas)
        n_subjects = rest.manifest["arrays"]["timeseries"]["shape"][0]
        rt = _open_tokens(rest_tokens, rest, atlas, (n_subjects, _open_windows(rest_tokens)))
    if tt is not None and rt is not None and tt.tokenizer["fingerprint"] != rt.tokenizer["fingerprint"]:
        raise InputError(rt.path / "manifest.json", "tokenizer.fingerprint",
                         f"{rt.tokenizer['fingerprint']!r} differs from the task tokens' "
                         f"{tt.tokenizer['fingerprint']!r}: one corpus, one tokenizer")
    return CorpusInputs(atlas, task, tt, rest, rt)


def _open_windows(path) -> int:
    """Windows per subject declared by a rest tokens dataset (checked against the array by the caller)."""
    shape = Dataset(path, kind="tokens").manifest["arrays"].get("tokens", {}).get("shape", [])
    if len(shape) != 3:
        raise InputError(Path(path) / "tokens.npy", "shape",
                         f"{shape}, expected [S, n_windows, P·L] for rest data")
    return int(shape[1])
