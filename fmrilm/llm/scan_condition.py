"""Scan conditioning: each finished scan's language-space summary, added to every later position.

Brain tokens alone gave a compact LM nothing it learned to use in a CPU-sized budget: a scan is 100
tokens whose meaning depends on the parcel they sit at, and captions were predicted equally well
from another scan's tokens (the shuffled control). Stage 1 already learned the missing map: its
contrastive read-out pools the quantized vectors of a scan, parcel by parcel, into the MiniLM text
space (fMRI-LM's language-consistent space). This module carries that read-out into the LM:

    summary(scan) = W · normalize( Σ_s code[token_s] · R_s )      R_s: [d_code, d_text] per slot s

and adds ``summary`` to the input embedding of every position after the scan's ``</scan>`` (until the
next scan ends), the way image features condition every step of a captioning decoder. It is a
function of the brain tokens only, so the shuffled control and in-silico stimulation act on it
through re-tokenisation exactly as on the tokens themselves, and it is causal: a scan's summary
appears only once all of its tokens have been read (also when the model writes scans).

``W`` starts at zero (LLaMA-Adapter's zero-init gating, Zhang et al. 2023; ControlNet's zero
convolutions), so a pretrained backbone's behaviour is untouched at step 0 and the conditioning
grows only as far as the losses ask for it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fmrilm.errors import InputError


class ScanCondition(nn.Module):
    """Per-scan summary vectors from brain tokens, forward-filled over the positions after each scan.

    Parameters
    ----------
    code_embeddings : Tensor [K, d_code]
        Stage-1 code vectors (a frozen buffer).
    tokens_per_scan : int
        Brain tokens between ``<scan>`` and ``</scan>`` (stage 1's P·L).
    d_model : int
        Width of the LM's embedding space.
    readout : Tensor [tokens_per_scan, d_code, d_text], optional
        Stage 1's per-slot contrastive read-out into the text space (trainable from there on). Without
        it a random read-out of width `readout_dim` is learned from scratch.
    readout_dim : int
        Width of the random read-out when `readout` is not given.
    """

    def __init__(self, code_embeddings: torch.Tensor, tokens_per_scan: int, d_model: int,
                 readout: torch.Tensor | None = None, readout_dim: int = 256, generator=None):
        super().__init__()
        codes = torch.as_tensor(code_embeddings, dtype=torch.float32)
        if tokens_per_scan < 1:
            raise InputError("scan_condition", "tokens_per_scan",
                             f"must be >= 1, got {tokens_per_scan} (stage 2 sets it from the tokenizer; set "
                             "llm.scan_condition.tokens_per_scan or llm.scan_condition.enabled=false)")
        if readout is None:
            scale = 1.0 / math.sqrt(tokens_per_scan * codes.shape[1])
            readout = torch.randn(tokens_per_scan, codes.shape[1], readout_dim, generator=generator) * scale
        readout = torch.as_tensor(readout, dtype=torch.float32)
        if readout.shape[:2] != (tokens_per_scan, codes.shape[1]):
            raise InputError("scan_condition", "readout", f"expected [{tokens_per_scan}, {codes.shape[1]}, d_text], "
                                                          f"got {tuple(readout.shape)}")
        self.tokens_per_scan = tokens_per_scan
        self.register_buffer("codes", codes.clone())
        self.readout = nn.Parameter(readout.clone())
        self.proj = nn.Linear(readout.shape[2], d_model, bias=False)
        nn.init.zeros_(self.proj.weight)

    def summarize(self, scan_codes: torch.Tensor) -> torch.Tensor:
        """Summaries ``[N, d_model]`` of scans given as codebook ids ``[N, tokens_per_scan]``."""
        pooled = torch.einsum("nsc,sct->nt", self.codes[scan_codes], self.readout)
        return self.proj(F.normalize(pooled, dim=-1))

    def forward(self, input_ids: torch.Tensor, vocab, carry: torch.Tensor | None = None):
        """Conditioning ``[B, T, d_model]`` for a batch of ids, and the carry for the next call.

        Parameters
        ----------
        input_ids : LongTensor [B, T]
        vocab : BrainVocab
        carry : Tensor [B, d_model], optional
            The summary in force before the first position (from an earlier call on the same
            sequences, e.g. the prompt before KV-cached decoding); zeros when None.
        """
        batch, length = input_ids.shape
        d_model = self.proj.out_features
        table = torch.zeros((batch, length + 1, d_model), dtype=self.proj.weight.dtype, device=input_ids.device)
        if carry is not None:
            table[:, 0] = carry.to(table.dtype)
        rows, ends = (input_ids == vocab.scan_end).nonzero(as_tuple=True)
        span = ends.unsqueeze(1) - self.tokens_per_scan + torch.arange(self.tokens_per_scan, device=ends.device)
        if (span[:, 0] < 0).any():
            raise InputError("input_ids", "scan", f"a scan ends before {self.tokens_per_scan} brain tokens were read")
        ids = input_ids[rows.unsqueeze(1), span]
        if ((ids < vocab.brain_offset) | (ids >= vocab.scan_start)).any():
            raise InputError("input_ids", "scan", f"a scan does not hold exactly {self.tokens_per_scan} brain "
                                                  "tokens before its </scan>")
        # Also with no scan in the batch (an empty summary): the weights then get zero gradients rather
        # than none, so data-parallel ranks always reduce the same set of gradients.
        table[rows, ends + 1] = self.summarize(ids - vocab.brain_offset).to(table.dtype)
        # Slot p+1 of `table` holds the summary written at position p; 0 holds the carry. Each position
        # reads the latest slot at or before it.
        steps = torch.arange(1, length + 1, device=input_ids.device).expand(batch, length)
        latest = torch.where(input_ids == vocab.scan_end, steps, torch.zeros_like(steps)).cummax(dim=1).values
        condition = torch.gather(table, 1, latest.unsqueeze(-1).expand(batch, length, d_model))
        return condition, condition[:, -1]
