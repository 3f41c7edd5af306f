"""Write a tokens dataset: a task or rest dataset passed through a trained tokenizer.

The tokens dataset (manifest kind ``"tokens"``) is all that later stages read of stage 1:

- array ``tokens``: int16 (int32 if the vocabulary exceeds 32767) of shape ``[N_trials, P·L]``
  for a task dataset (row i = trial i of the source) or ``[S, n_windows, P·L]`` for a rest
  dataset (non-overlapping windows of W TRs, z-scored per parcel); parcel-major token order;
- manifest extras ``tokenizer`` (name, codebook_size, levels, vocab_size, fingerprint, atlas, ...),
  ``source_dataset`` (absolute path), ``source_kind``, and for rest ``window`` and ``tr``.

A rest dataset can also go through a *task* (vertex-pattern) tokenizer, so one codebook serves
both kinds of data (one corpus, one brain vocabulary): every TR becomes one scan, its vertex
pattern taken from ``vertex_timeseries`` (real runs) or from
:func:`fmrilm.brain.rest_world.expand_to_vertices` (synthetic runs), z-scored per vertex over
time like task betas are over trials. The tokens are then ``[S, T, P·L]`` with ``window`` 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from fmrilm.brain.store import Dataset, DatasetWriter
from fmrilm.errors import InputError, check_finite


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest signed integer type that holds every token id."""
    return np.dtype(np.int16 if vocab_size <= np.iinfo(np.int16).max + 1 else np.int32)


def write_tokens_dataset(tokenizer, dataset, out, batch_size: int = 256, overwrite: bool = False,
                         tokenizer_dir: str | None = None) -> Path:
    """Tokenize every scan of `dataset` into a new tokens dataset at `out` (checked before writing)."""
    from fmrilm.tokenizer.data import all_scans

    ds = Dataset(dataset)
    if ds.kind == "rest" and tokenizer.cfg.input == "task":
        return _write_rest_as_vertex_scans(tokenizer, ds, out, batch_size, overwrite, tokenizer_dir)
    scans = all_scans(ds.path, tokenizer)
    dtype = token_dtype(tokenizer.vocab_size)
    extras = {"tokenizer": tokenizer.describe(),
              "source_dataset": str(ds.path.resolve()), "source_kind": ds.kind}
    if ds.kind == "rest":
        n_subjects = ds.manifest["arrays"]["timeseries"]["shape"][0]
        shape = (n_subjects, len(scans) // n_subjects, tokenizer.tokens_per_scan)
        extras.update(window=tokenizer.width, tr=ds.manifest.get("tr"))
    else:
        shape = (len(scans), tokenizer.tokens_per_scan)
    if len(scans) == 0:
        raise InputError(ds.path, "scans", "no scans to tokenize")
    config = {"tokenizer": tokenizer_dir, "dataset": str(ds.path), "batch_size": batch_size}
    with DatasetWriter(out, "tokens", tokenizer.atlas_info, config, seed=0, overwrite=overwrite) as writer:
        tokens = writer.create_array("tokens", shape, dtype).reshape(len(scans), -1)
        for start in tqdm(range(0, len(scans), batch_size), desc="encode", unit="batch"):
            positions = np.arange(start, min(start + batch_size, len(scans)))
            tokens[positions] = tokenizer.encode(scans.batch(positions)["x"], ds.path).numpy().astype(dtype)
        return writer.finish(**extras)


def _write_rest_as_vertex_scans(tokenizer, ds: Dataset, out, batch_size: int, overwrite: bool,
                                tokenizer_dir: str | None) -> Path:
    """Rest dataset through a vertex-pattern tokenizer: one scan per TR → tokens ``[S, T, P·L]``."""
    from fmrilm.brain.rest_world import expand_to_vertices
    from fmrilm.tokenizer.data import dataset_atlas, zscore_time
    from fmrilm.tokenizer.model import check_atlas

    check_atlas(tokenizer.atlas_info, ds.atlas_info, ds.path / "manifest.json")
    series = ds.array("timeseries")
    vertex_series = ds.array("vertex_timeseries") if "vertex_timeseries" in ds.manifest["arrays"] else None
    atlas = dataset_atlas(ds.atlas_info, ds.path / "manifest.json") if vertex_series is None else None
    n_subjects, n_trs = series.shape[:2]
    dtype = token_dtype(tokenizer.vocab_size)
    extras = {"tokenizer": tokenizer.describe(), "source_dataset": str(ds.path.resolve()),
              "source_kind": ds.kind, "window": 1, "tr": ds.manifest.get("tr"), "rest_input": "vertex"}
    config = {"tokenizer": tokenizer_dir, "dataset": str(ds.path), "batch_size": batch_size}
    with DatasetWriter(out, "tokens", tokenizer.atlas_info, config, seed=0, overwrite=overwrite) as writer:
        tokens = writer.create_array("tokens", (n_subjects, n_trs, tokenizer.tokens_per_scan), dtype)
        for s in tqdm(range(n_subjects), desc="encode rest", unit="subject"):
            if vertex_series is not None:
                vertices = np.asarray(vertex_series[s], np.float32)
            else:
                vertices = expand_to_vertices(zscore_time(series[s]), atlas, ds.manifest["seed"], s)
            check_finite(vertices, ds.path, f"subject {s} vertex time series")
            scans = zscore_time(vertices)
            for start in range(0, n_trs, batch_size):
                x = tokenizer.group_vertices(scans[start:start + batch_size], ds.path)
                tokens[s, start:start + batch_size] = tokenizer.encode(x, ds.path).numpy().astype(dtype)
        return writer.finish(**extras)
