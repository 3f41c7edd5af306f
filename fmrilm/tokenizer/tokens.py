"""Write a tokens dataset: a task or rest dataset passed through a trained tokenizer.

The tokens dataset (manifest kind ``"tokens"``) is all that later stages read of stage 1:

- array ``tokens``: int16 (int32 if the vocabulary exceeds 32767) of shape ``[N_trials, P·L]``
  for a task dataset (row i = trial i of the source) or ``[S, n_windows, P·L]`` for a rest
  dataset (non-overlapping windows of W TRs, z-scored per parcel); parcel-major token order;
- array ``latents`` (only when asked for): float16 ``[..., P, code_dim]`` beside ``tokens``, the
  encoder's pre-quantisation outputs, for an LM that reads them instead of the codes
  (``llm.brain_input: continuous``; at fMRI-LM's scale, 30k trials × 1,000 parcels × 64, 3.8 GB);
- manifest extras ``tokenizer`` (name, codebook_size, levels, vocab_size, fingerprint, atlas, ...),
  ``source_dataset`` (absolute path), ``source_kind``, and for rest ``window`` and ``tr``.

A rest dataset given a task tokenizer that carries a rest companion (:meth:`~fmrilm.tokenizer.model.
BrainTokenizer.attach_rest`) goes through the companion: fMRI-LM's temporal patches, ``[S, T / W, P·L]``
with ids after the task codes (manifest ``rest_input: "patch"``, as for a rest tokenizer alone).

Without a companion a rest dataset can still go through a *task* (vertex-pattern) tokenizer, so one
codebook serves both kinds of data (one corpus, one brain vocabulary): every TR becomes one scan, its vertex
pattern taken from ``vertex_timeseries`` (real runs) or from
:func:`fmrilm.brain.rest_world.expand_to_vertices` (synthetic runs), z-scored per vertex over
time like task betas are over trials. The tokens are then ``[S, T, P·L]`` with ``window`` 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fmrilm.brain.store import Dataset, DatasetWriter
from fmrilm.errors import InputError, check_finite


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest signed integer type that holds every token id."""
    return np.dtype(np.int16 if vocab_size <= np.iinfo(np.int16).max + 1 else np.int32)


@dataclass
class TokensConfig:
    """Options of the tokens stage (``fmrilm tokenizer encode``, the pipeline's ``*_tokens`` stages).

    Attributes
    ----------
    batch_size : int
        Scans encoded at once.
    latents : bool
        Also write the encoder outputs (array ``latents``), which ``llm.brain_input: continuous`` reads.
    """

    batch_size: int = 256
    latents: bool = False


class _Encoded:
    """The arrays one tokens dataset writes: tokens, and the encoder outputs when asked for."""

    def __init__(self, writer: DatasetWriter, tokenizer, leading: tuple, latents: bool, patches: bool = False):
        # rest patches go through the companion, their ids after the task codes
        self.encode = tokenizer.encode_rest if patches else tokenizer.encode_with_latents
        self.tokens = writer.create_array("tokens", (*leading, tokenizer.tokens_per_scan),
                                          token_dtype(tokenizer.total_vocab_size))
        self.latents = writer.create_array("latents", (*leading, tokenizer.n_parcels, tokenizer.cfg.code_dim),
                                           np.float16) if latents else None

    def put(self, index, x: torch.Tensor, source) -> None:
        """Encode scans ``x`` [B, P, D] into rows `index` (an index into the leading axes)."""
        tokens, latents = self.encode(x, source)
        self.tokens[index] = tokens.numpy().astype(self.tokens.dtype)
        if self.latents is not None:
            self.latents[index] = latents.numpy().astype(np.float16)


def write_tokens_dataset(tokenizer, dataset, out, batch_size: int = 256, overwrite: bool = False,
                         tokenizer_dir: str | None = None, latents: bool = False) -> Path:
    """Tokenize every scan of `dataset` into a new tokens dataset at `out` (checked before writing);
    with `latents`, also store the encoder outputs (see the module docstring)."""
    from fmrilm.tokenizer.data import all_scans

    if batch_size < 1:
        raise InputError("tokens config", "batch_size", f"must be >= 1, got {batch_size}")
    ds = Dataset(dataset)
    patches = ds.kind == "rest" and tokenizer.rest is not None
    if ds.kind == "rest" and tokenizer.cfg.input == "task" and not patches:
        return _write_rest_as_vertex_scans(tokenizer, ds, out, batch_size, overwrite, tokenizer_dir, latents)
    reader = tokenizer.rest if patches else tokenizer
    scans = all_scans(ds.path, reader)
    extras = {"tokenizer": tokenizer.describe(),
              "source_dataset": str(ds.path.resolve()), "source_kind": ds.kind}
    if ds.kind == "rest":
        n_subjects = ds.manifest["arrays"]["timeseries"]["shape"][0]
        shape = (n_subjects, len(scans) // n_subjects, tokenizer.tokens_per_scan)
        extras.update(window=reader.width, tr=ds.manifest.get("tr"), rest_input="patch")
    else:
        shape = (len(scans), tokenizer.tokens_per_scan)
    if len(scans) == 0:
        raise InputError(ds.path, "scans", "no scans to tokenize")
    config = {"tokenizer": tokenizer_dir, "dataset": str(ds.path), "batch_size": batch_size, "latents": latents}
    with DatasetWriter(out, "tokens", tokenizer.atlas_info, config, seed=0, overwrite=overwrite) as writer:
        arrays = _Encoded(writer, tokenizer, shape[:-1], latents, patches)
        # one flat row per scan, in dataset order (rest: subject-major windows)
        arrays.tokens = arrays.tokens.reshape(len(scans), -1)
        if arrays.latents is not None:
            arrays.latents = arrays.latents.reshape(len(scans), *arrays.latents.shape[-2:])
        for start in tqdm(range(0, len(scans), batch_size), desc="encode", unit="batch"):
            positions = np.arange(start, min(start + batch_size, len(scans)))
            arrays.put(positions, scans.batch(positions)["x"], ds.path)
        return writer.finish(**extras)


def _write_rest_as_vertex_scans(tokenizer, ds: Dataset, out, batch_size: int, overwrite: bool,
                                tokenizer_dir: str | None, latents: bool) -> Path:
    """Rest dataset through a vertex-pattern tokenizer: one scan per TR → tokens ``[S, T, P·L]``."""
    from fmrilm.brain.rest_world import expand_to_vertices
    from fmrilm.tokenizer.data import dataset_atlas, zscore_time
    from fmrilm.tokenizer.model import check_atlas

    check_atlas(tokenizer.atlas_info, ds.atlas_info, ds.path / "manifest.json")
    series = ds.array("timeseries")
    vertex_series = ds.array("vertex_timeseries") if "vertex_timeseries" in ds.manifest["arrays"] else None
    atlas = dataset_atlas(ds.atlas_info, ds.path / "manifest.json") if vertex_series is None else None
    n_subjects, n_trs = series.shape[:2]
    extras = {"tokenizer": tokenizer.describe(), "source_dataset": str(ds.path.resolve()),
              "source_kind": ds.kind, "window": 1, "tr": ds.manifest.get("tr"), "rest_input": "vertex"}
    config = {"tokenizer": tokenizer_dir, "dataset": str(ds.path), "batch_size": batch_size, "latents": latents}
    with DatasetWriter(out, "tokens", tokenizer.atlas_info, config, seed=0, overwrite=overwrite) as writer:
        arrays = _Encoded(writer, tokenizer, (n_subjects, n_trs), latents)
        for s in tqdm(range(n_subjects), desc="encode rest", unit="subject"):
            if vertex_series is not None:
                vertices = np.asarray(vertex_series[s], np.float32)
            else:
                vertices = expand_to_vertices(zscore_time(series[s]), atlas, ds.manifest["seed"], s)
            check_finite(vertices, ds.path, f"subject {s} vertex time series")
            scans = zscore_time(vertices)
            for start in range(0, n_trs, batch_size):
                x = tokenizer.group_vertices(scans[start:start + batch_size], ds.path)
                arrays.put((s, slice(start, start + batch_size)), x, ds.path)
        return writer.finish(**extras)
