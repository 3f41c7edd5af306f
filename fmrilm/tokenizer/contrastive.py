"""Language-consistent code space (fMRI-LM stage 1): contrast pooled scan codes with text embeddings.

The quantized parcel vectors of a scan are pooled into one vector by a learned per-parcel linear
read-out (parcel identity matters, so a plain mean would throw information away), L2-normalised
and compared with the MiniLM embedding of the scan's caption or description.

Repeated trials of one stimulus share a caption, so a batch can hold several true pairs per row;
both losses treat every pair with (near-)identical text as positive instead of as a negative.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Text embeddings with cosine above this are the same description (MiniLM of identical strings).
SAME_TEXT = 0.999


class ContrastiveHead(nn.Module):
    """Pool ``[B, P, C]`` quantized vectors to ``[B, T]`` and score them against text embeddings.

    Parameters
    ----------
    kind : {"clip", "siglip"}
        Softmax InfoNCE in both directions (CLIP) or pairwise sigmoid (SigLIP).
    n_parcels, code_dim, text_dim : int
    """

    def __init__(self, kind: str, n_parcels: int, code_dim: int, text_dim: int):
        super().__init__()
        self.kind = kind
        self.pool = nn.Parameter(torch.randn(n_parcels, code_dim, text_dim) / math.sqrt(n_parcels * code_dim))
        # Initial temperatures follow the CLIP (1/0.07) and SigLIP (scale 10, bias -10) papers.
        # Shape (1,), not 0-d: DeepSpeed broadcasts parameters as byte views, which 0-d tensors refuse.
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1 / 0.07 if kind == "clip" else 10.0)]))
        self.logit_bias = nn.Parameter(torch.tensor([-10.0 if kind == "siglip" else 0.0]))

    def embed(self, quantized: torch.Tensor) -> torch.Tensor:
        """Unit-norm scan embeddings ``[B, T]`` in the text space."""
        return F.normalize(torch.einsum("bpc,pct->bt", quantized, self.pool), dim=-1)

    def forward(self, quantized: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        brain = self.embed(quantized).float()
        text = F.normalize(text.float(), dim=-1)
        logits = brain @ text.t() * self.logit_scale.exp().clamp(max=100.0)
        positive = (text @ text.t() > SAME_TEXT).float()
        if self.kind == "clip":
            targets = positive / positive.sum(1, keepdim=True)
            return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets.t()))
        signs = 2 * positive - 1
        return -F.logsigmoid(signs * (logits + self.logit_bias)).sum() / logits.shape[0]
