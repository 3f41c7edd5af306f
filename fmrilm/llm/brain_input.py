"""How a scan enters the LM: its codes, or the tokenizer encoder's continuous outputs.

``brain_input: codes`` embeds each brain token from its codebook vector through the learned projection
(:class:`~fmrilm.llm.vocab.BrainEmbedding`). ``brain_input: continuous`` — what fMRI-LM's released
code does — feeds the encoder's pre-quantisation output of that parcel through the same projection
instead. The codes stay everything else: the ids in the sequence (delimiters, parcel slots, labels),
the brain head's targets, what retrieval and the scan conditioning read, and the input of rest scans:
those are what temporal prediction writes and reads back, and the model has no encoder output of a
scan it predicts. In training every task scan of a sequence reads its latents, a text→brain target
too (teacher forcing, as fMRI-LM).

Latents travel beside the ids as ``brain_latents`` ``[B, n, d_code]`` — the encoder outputs of a
row's brain tokens in reading order (scan by scan, parcel-major) — and ``brain_latent_count`` ``[B]``:
each row's count, all of its brain tokens or 0 (the row reads codes). Where they come from:

- training: the corpus's input task tokens dataset, written with ``latents: true``
  (:mod:`fmrilm.tokenizer.tokens`), looked up by each sample's ``scans`` references at batch time
  (:class:`ScanLatents`), so a large corpus never holds them in memory;
- evaluation, stimulation, ``ask``: :meth:`fmrilm.tokenizer.model.BrainTokenizer.encode_with_latents`
  on the scans themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fmrilm.errors import InputError

BRAIN_INPUTS = ("codes", "continuous")


def check_brain_input(value: str, source="llm") -> str:
    """`value` if it is one of :data:`BRAIN_INPUTS`, else InputError."""
    if value not in BRAIN_INPUTS:
        raise InputError(source, "brain_input", f"{value!r} is not one of {list(BRAIN_INPUTS)}")
    return value


def latent_rows(latents, source: str) -> np.ndarray:
    """Encoder outputs of a sequence's scans ``[n_scans, P, d]`` → ``[n_scans·P, d]``, one row per brain
    token in reading order (the model checks the count against the sequence's brain tokens)."""
    latents = np.asarray(latents)
    if latents.ndim != 3:
        raise InputError(source, "brain_latents", f"expected [n_scans, P, d_code], got shape {latents.shape}")
    return latents.reshape(-1, latents.shape[-1])


def pad_latents(rows: list, d_code: int) -> dict[str, torch.Tensor]:
    """Per-row latents (``[n_i, d]`` arrays, or None for a row that reads codes) → the batch fields
    ``brain_latents`` ``[B, max n_i, d]`` (float32, zero-padded) and ``brain_latent_count`` ``[B]``."""
    counts = [0 if r is None else len(r) for r in rows]
    out = torch.zeros((len(rows), max(counts, default=0), d_code), dtype=torch.float32)
    for i, r in enumerate(rows):
        if r is not None and len(r):
            if r.shape[-1] != d_code:
                raise InputError(f"batch row {i}", "brain_latents", f"width {r.shape[-1]}, the model reads {d_code}")
            out[i, :len(r)] = torch.from_numpy(np.asarray(r, np.float32))
    return {"brain_latents": out, "brain_latent_count": torch.tensor(counts, dtype=torch.long)}


class ScanLatents:
    """The encoder outputs of a corpus's task scans: its input task tokens dataset's ``latents``, memory-mapped.

    Only task scans: rest scans are what temporal prediction writes and reads back, as codes (the model
    has no encoder outputs of the scans it predicts), so rest latents would train an input that
    next-scan generation never gives it.

    Parameters
    ----------
    task : array [N_trials, P, d]
    source : str
        Named in errors.
    """

    def __init__(self, task: np.ndarray, source: str):
        self.task, self.source = task, source
        self.d_code = int(task.shape[-1])

    @classmethod
    def from_corpus(cls, corpus_dir) -> ScanLatents:
        """Open the latents of the task tokens `corpus_dir` was built from (``corpus.json`` inputs);
        InputError naming the fix when they have none."""
        from fmrilm.artifacts import read_corpus_record
        from fmrilm.brain.store import Dataset

        path = (read_corpus_record(corpus_dir).get("inputs") or {}).get("task_tokens")
        tokens = Dataset(path, kind="tokens") if path else None
        if tokens is None or "latents" not in tokens.manifest["arrays"]:
            raise InputError(Path(corpus_dir) / "corpus.json", "inputs",
                             "brain_input: continuous reads the encoder outputs of the corpus's task tokens, and "
                             "they have none: rewrite the tokens with latents (`fmrilm tokenizer encode --latents`, or "
                             "the pipeline's `task_tokens: {set: [latents=true]}`)")
        return cls(tokens.array("latents"), str(corpus_dir))

    def lookup(self, refs, source: str) -> np.ndarray | None:
        """Latents ``[n_scans, P, d]`` of a sample's scan references (``["task", trial]``), or None when a
        scan is not a task scan (the sample reads codes)."""
        if not refs or any(ref[0] != "task" for ref in refs):
            return None
        try:
            return np.stack([self.task[int(ref[1])] for ref in refs])
        except (IndexError, TypeError, ValueError) as err:
            raise InputError(source, "scans", f"references {refs[:2]}… do not match the task tokens: {err}") \
                from None

    def batch(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        """The latent batch fields of encoded samples carrying ``scans``, the references of the scans in their
        sequence in order (see the module docstring; ``[]`` for a text-only sample)."""
        rows = []
        for sample in samples:
            source = sample.get("source", "sample")
            if sample.get("scans") is None:
                raise InputError(source, "scans", "no scan references (a corpus built before continuous brain input "
                                                  "existed): rebuild the corpus")
            found = self.lookup(sample["scans"], source)
            rows.append(None if found is None else latent_rows(found, source))
        return pad_latents(rows, self.d_code)
