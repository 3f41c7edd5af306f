"""The brain vocabulary: K brain tokens and three delimiters appended to the text vocabulary.

Ids, for a text tokenizer of ``n_text`` ids and a codebook of size K::

    [0, n_text)                 text tokens (predicted by the LM head)
    [n_text, n_text + K)        <brain_0> ... <brain_{K-1}>  (predicted by the separate brain head)
    n_text + K, + 1, + 2        <scan>  </scan>  <t>         (structural: placed, never predicted)

A scan (one row of stage-1 tokens, P·L codebook ids) is written ``<scan> b b ... b </scan>``; the scans
of a run are joined by the time-step separator ``<t>``.

The input embeddings of the new tokens come from :class:`BrainEmbedding`: brain tokens are the
stage-1 code embeddings [K, d_code] through a learned projection into the LM's embedding space, so
codes that the tokenizer placed near each other (and near their describing text) start near each
other in the LM too; the delimiters are free learned vectors. The codebook is shared by all parcels,
so with ``n_slots`` a learned parcel-position embedding (CorText's region embedding) is added to the
s-th brain token of every scan: the same code at two parcels reads differently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fmrilm.errors import InputError

SCAN_START, SCAN_END, TIME_SEP = "<scan>", "</scan>", "<t>"
DELIMITERS = (SCAN_START, SCAN_END, TIME_SEP)


def brain_token(code: int) -> str:
    return f"<brain_{code}>"


@dataclass(frozen=True)
class BrainVocab:
    """Id layout of the extended vocabulary (see module docstring)."""

    n_text: int
    codebook_size: int

    @property
    def brain_offset(self) -> int:
        return self.n_text

    @property
    def scan_start(self) -> int:
        return self.n_text + self.codebook_size

    @property
    def scan_end(self) -> int:
        return self.scan_start + 1

    @property
    def time_sep(self) -> int:
        return self.scan_start + 2

    @property
    def size(self) -> int:
        return self.n_text + self.codebook_size + len(DELIMITERS)

    def new_tokens(self) -> list[str]:
        return [brain_token(k) for k in range(self.codebook_size)] + list(DELIMITERS)

    def codes_to_ids(self, codes, source: str = "brain_tokens") -> np.ndarray:
        """Codebook ids in [0, K) → LM token ids; InputError on anything outside the codebook."""
        codes = np.asarray(codes)
        if codes.size and not np.issubdtype(codes.dtype, np.integer):
            raise InputError(source, "dtype", f"codebook ids must be integers, got {codes.dtype}")
        bad = (codes < 0) | (codes >= self.codebook_size)
        if bad.any():
            raise InputError(
                source,
                "values",
                f"{int(bad.sum())} ids outside the codebook [0, {self.codebook_size}), "
                f"e.g. {int(codes[bad].flat[0])}",
            )
        return codes.astype(np.int64) + self.brain_offset

    def ids_to_codes(self, ids, source: str = "token_ids") -> np.ndarray:
        """LM token ids of brain tokens → codebook ids; InputError if any id is not a brain token."""
        ids = np.asarray(ids, dtype=np.int64)
        bad = (ids < self.brain_offset) | (ids >= self.scan_start)
        if bad.any():
            raise InputError(
                source,
                "values",
                f"{int(bad.sum())} ids are not brain tokens "
                f"[{self.brain_offset}, {self.scan_start}), e.g. {int(ids[bad].flat[0])}",
            )
        return ids - self.brain_offset

    def run_ids(self, tokens, source: str = "brain_tokens") -> list[int]:
        """Token ids of a run of scans [n_scans, P·L]: ``<scan> … </scan> <t> <scan> … </scan>``."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise InputError(source, "shape", f"expected [n_scans, P·L] with both > 0, got {tokens.shape}")
        ids = self.codes_to_ids(tokens, source)
        out: list[int] = []
        for i, row in enumerate(ids):
            if i:
                out.append(self.time_sep)
            out += [self.scan_start, *row.tolist(), self.scan_end]
        return out

    def to_dict(self) -> dict:
        return {"n_text": self.n_text, "codebook_size": self.codebook_size}


def extend_tokenizer(tokenizer, codebook_size: int) -> BrainVocab:
    """Add the brain tokens and delimiters to `tokenizer` (in place) and return the id layout.

    A tokenizer that already holds them (a merged model) is accepted when its layout matches.
    """
    if codebook_size < 1:
        raise InputError("llm", "codebook_size", f"must be >= 1, got {codebook_size}")
    vocab = tokenizer.get_vocab()
    if brain_token(0) in vocab:
        layout = BrainVocab(n_text=vocab[brain_token(0)], codebook_size=codebook_size)
    else:
        layout = BrainVocab(n_text=len(tokenizer), codebook_size=codebook_size)
        # Special tokens are never split, so "<brain_12>" in a string always maps to its one id.
        tokenizer.add_tokens(layout.new_tokens(), special_tokens=True)
    got = tokenizer.convert_tokens_to_ids(layout.new_tokens())
    if got != list(range(layout.n_text, layout.size)) or len(tokenizer) != layout.size:
        raise InputError(
            "tokenizer",
            "brain tokens",
            f"brain vocabulary is not {codebook_size} contiguous tokens + "
            f"{len(DELIMITERS)} delimiters after the text vocabulary "
            f"(tokenizer of {len(tokenizer)} ids, first brain id {got[0]})",
        )
    return layout


class BrainEmbedding(nn.Module):
    """Input embeddings of the K brain tokens (projected codes) and the delimiters (free vectors).

    Parameters
    ----------
    code_embeddings : Tensor [K, d_code]
        Stage-1 codebook vectors; kept frozen (a buffer), only the projection learns.
    d_model : int
        Width of the LM's embedding space.
    scale : float
        Per-coordinate standard deviation of the LM's text embeddings; the initial projected codes
        and delimiters are drawn at the same scale so no token dominates the residual stream.
    n_slots : int
        Brain tokens per scan (P·L) with one learned parcel-position vector each; 0 for none.
    """

    def __init__(self, code_embeddings: torch.Tensor, d_model: int, scale: float, generator=None,
                 n_slots: int = 0):
        super().__init__()
        codes = torch.as_tensor(code_embeddings, dtype=torch.float32)
        if codes.ndim != 2 or not torch.isfinite(codes).all():
            raise InputError(
                "code_embeddings", "values", f"expected finite [K, d_code], got shape {tuple(codes.shape)}"
            )
        self.register_buffer("codes", codes.clone())
        self.proj = nn.Linear(codes.shape[1], d_model, bias=False)
        self.delimiters = nn.Parameter(torch.randn(len(DELIMITERS), d_model, generator=generator) * scale)
        # zero at the start: the projected codes alone first, positions only as far as the losses ask
        self.slots = nn.Parameter(torch.zeros(n_slots, d_model)) if n_slots > 0 else None
        with torch.no_grad():
            self.proj.weight.normal_(generator=generator)
            projected_std = (codes @ self.proj.weight.T).std().clamp_min(1e-8)
            self.proj.weight.mul_(scale / projected_std)

    @classmethod
    def from_table(cls, table: torch.Tensor, codebook_size: int, n_slots: int = 0) -> BrainEmbedding:
        """Rebuild from materialised embeddings [K + 3, d] (a merged model): identity projection."""
        table = table.detach().float()
        module = cls(table[:codebook_size], table.shape[1], scale=1.0, n_slots=n_slots)
        with torch.no_grad():
            module.proj.weight.copy_(torch.eye(table.shape[1]))
            module.delimiters.copy_(table[codebook_size:])
        return module

    def project(self, latents: torch.Tensor) -> torch.Tensor:
        """Continuous scan inputs ``[..., d_code]`` (the tokenizer encoder's outputs) through the codes'
        projection → ``[..., d_model]`` (``brain_input: continuous``, :mod:`fmrilm.llm.brain_input`)."""
        if latents.shape[-1] != self.proj.in_features:
            raise InputError("brain_latents", "shape", f"width {latents.shape[-1]}, the projection reads "
                                                       f"{self.proj.in_features} (the tokenizer's code_dim)")
        return self.proj(latents.to(self.proj.weight.dtype))

    def table(self) -> torch.Tensor:
        """Embeddings of all new tokens [K + 3, d_model], brain tokens first."""
        return torch.cat([self.proj(self.codes), self.delimiters], dim=0)

    def slot_embeddings(self, input_ids: torch.Tensor, vocab: BrainVocab, carry: torch.Tensor | None = None):
        """Parcel-position vectors [B, T, d] of the brain tokens (zero elsewhere), and the carry: brain
        tokens read since the last ``<scan>`` at the end, for a later call on the same sequences
        (KV-cached decoding of a scan); `carry` is that count before the first position."""
        is_brain = (input_ids >= vocab.brain_offset) & (input_ids < vocab.scan_start)
        is_start = input_ids == vocab.scan_start
        read = is_brain.long().cumsum(1)
        # brain tokens read at the latest <scan> (read is non-decreasing, so the running max of its
        # value at start positions is its value at the latest one)
        at_start = torch.where(is_start, read, torch.zeros_like(read)).cummax(1).values
        count = read - at_start
        if carry is not None:
            count = count + torch.where(is_start.cumsum(1) == 0, carry.unsqueeze(1), torch.zeros_like(count))
        if (is_brain & (count > self.slots.shape[0])).any():
            raise InputError("input_ids", "scan", f"a scan holds more than the {self.slots.shape[0]} brain tokens "
                                                  "that have parcel-position embeddings")
        slot = (count - 1).clamp(min=0)
        return self.slots[slot] * is_brain.unsqueeze(-1), count[:, -1]
