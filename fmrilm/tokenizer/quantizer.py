"""The shared codebook: a thin wrapper around vector-quantize-pytorch plus a matmul-bound encode path.

Training uses the library's modules unchanged (``VectorQuantize``, ``ResidualVQ``, ``FSQ``) with
its anti-collapse tools: k-means init, EMA dead-code replacement, cosine or low-dimensional
codebooks, the rotation trick, and ``sync_codebook`` so every rank holds the same codebook.

Inference uses :meth:`Quantizer.nearest`: the library's eval forward materialises the full
``[N, K]`` distance matrix several times (squares, sums, clamp, sqrt, negation, a one-hot) and
runs at ~64k vectors/s for ``VectorQuantize(64, 1024)`` on this machine. The nearest code only
needs ``argmin_k ||e_k||² - 2 x·e_k`` (the ``||x||²`` term is constant per row), i.e. one
``addmm`` and one ``argmin`` per chunk of rows. It returns the same indices as the library for
the same inputs, including cosine-similarity codebooks (``argmax x̂·e_k``), projected
(``codebook_dim``) codebooks and residual levels; ``tests/test_tokenizer_quantizer.py`` checks
this. The one exception is a tie at fp32 resolution, i.e. two (near-)duplicate codes whose
distances differ by less than rounding (k-means init and dead-code replacement in a *shared*
residual codebook can create such pairs): there the library's own choice depends on the batch's
BLAS kernel, and either code decodes to the same vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import FSQ, ResidualVQ, VectorQuantize

from fmrilm.tokenizer.config import QuantizerConfig

# Rows per distance block in the fast path: a [4096, K] fp32 block stays within L2/L3 for K <= 1024.
CHUNK_ROWS = 4096


@dataclass
class QuantizerOutput:
    """Result of a quantizer forward pass.

    Attributes
    ----------
    quantized : Tensor, shape (B, P, C)
        Quantized vectors in the encoder's output space (gradients pass via the library's estimator).
    indices : LongTensor, shape (B, P, L)
        Code index per parcel and level, each in ``[0, K)``.
    commit_loss : Tensor
        Scalar commitment loss summed over levels (0 for FSQ).
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    commit_loss: torch.Tensor


def build_library_quantizer(cfg: QuantizerConfig, dim: int, sync_codebook: bool) -> nn.Module:
    """Construct the configured vector-quantize-pytorch module for inputs of width `dim`."""
    if cfg.kind == "fsq":
        return FSQ(levels=list(cfg.fsq_levels), dim=dim)
    common = dict(codebook_size=cfg.codebook_size, codebook_dim=cfg.codebook_dim, kmeans_init=cfg.kmeans_init,
                  kmeans_iters=cfg.kmeans_iters, decay=cfg.decay,
                  threshold_ema_dead_code=cfg.threshold_ema_dead_code, use_cosine_sim=cfg.use_cosine_sim,
                  rotation_trick=cfg.rotation_trick, commitment_weight=cfg.commitment_weight,
                  # Explicit: the library's own default caches "not distributed" if built before init.
                  sync_codebook=sync_codebook)
    if cfg.kind == "rvq":
        return ResidualVQ(dim=dim, num_quantizers=cfg.levels, shared_codebook=cfg.shared_codebook, **common)
    return VectorQuantize(dim=dim, **common)


def nearest_code(x: torch.Tensor, codebook: torch.Tensor, cosine: bool) -> torch.Tensor:
    """Index of the nearest code for each row of `x`, by matmul + argmin.

    Parameters
    ----------
    x : Tensor, shape (N, d)
        Query vectors (already unit-norm when `cosine`).
    codebook : Tensor, shape (K, d)
    cosine : bool
        Maximise the dot product (unit-norm codebook) instead of minimising Euclidean distance.

    Returns
    -------
    LongTensor, shape (N,)
    """
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    if cosine:
        for start in range(0, x.shape[0], CHUNK_ROWS):
            block = x[start:start + CHUNK_ROWS]
            torch.argmax(block @ codebook.t(), dim=1, out=out[start:start + block.shape[0]])
        return out
    # ||x||² is the same for every code of a row, so it cannot change the argmin: drop it.
    sq_norms = (codebook * codebook).sum(1)
    for start in range(0, x.shape[0], CHUNK_ROWS):
        block = x[start:start + CHUNK_ROWS]
        scores = torch.addmm(sq_norms, block, codebook.t(), beta=1.0, alpha=-2.0)
        torch.argmin(scores, dim=1, out=out[start:start + block.shape[0]])
    return out


class Quantizer(nn.Module):
    """The shared codebook over parcel vectors ``[B, P, C]``.

    Parameters
    ----------
    cfg : QuantizerConfig
    dim : int
        Width C of the vectors to quantize (the encoder's output).
    sync_codebook : bool
        All-reduce codebook statistics across ranks (True under a multi-rank launcher).
    """

    def __init__(self, cfg: QuantizerConfig, dim: int, sync_codebook: bool = False):
        super().__init__()
        self.cfg = cfg
        self.kind = cfg.kind
        self.levels = cfg.levels
        self.codebook_size = cfg.codebook_size
        self.lib = build_library_quantizer(cfg, dim, sync_codebook)

    # ------------------------------------------------------------------ library paths
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize with the library (training and reference path); always fp32, outside autocast."""
        with torch.autocast("cpu", enabled=False):
            z = z.float()
            if self.kind == "fsq":
                quantized, idx = self.lib(z)
                return QuantizerOutput(quantized, idx.long().unsqueeze(-1), z.new_zeros(()))
            quantized, idx, loss = self.lib(z)
            if self.kind == "vq":
                idx = idx.unsqueeze(-1)
            return QuantizerOutput(quantized, idx, loss.sum())

    def vectors(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``[B, P, L]`` → quantized vectors ``[B, P, C]`` (the decoder's input)."""
        if self.kind == "rvq":
            return self.lib.get_output_from_indices(indices)
        if self.kind == "fsq":
            return self.lib.indices_to_codes(indices[..., 0])
        return self.lib.get_output_from_indices(indices[..., 0])

    def codebooks(self) -> list:
        """The library's ``Codebook`` modules (EMA cluster sizes live there); empty for FSQ."""
        if self.kind == "vq":
            return [self.lib._codebook]
        if self.kind == "rvq":
            unique = {id(layer._codebook): layer._codebook for layer in self.lib.layers}
            return list(unique.values())
        return []

    def code_embeddings(self) -> torch.Tensor:
        """Every code's output vector, ``[vocab, C]``; row i is the embedding of token id i.

        For ``rvq`` without a shared codebook the rows are level-major (level l, code k → l·K + k).
        """
        with torch.no_grad():
            if self.kind == "fsq":
                return self.lib.indices_to_codes(torch.arange(self.codebook_size)).float()
            if self.kind == "vq":
                return self.lib.get_output_from_indices(torch.arange(self.codebook_size)).float()
            tables = self.lib.codebooks
            tables = tables[:1] if self.cfg.shared_codebook else tables
            return self.lib.project_out(tables.reshape(-1, tables.shape[-1])).float()

    def initialised(self) -> bool:
        """False until k-means init has run (a forward pass in training mode)."""
        return all(bool(cb.initted) for cb in self.codebooks())

    # ------------------------------------------------------------------ fast path
    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Fast code assignment ``[B, P, C]`` → ``[B, P, L]``, identical to the library's eval forward."""
        if not self.initialised():
            raise RuntimeError("codebook not initialised (k-means init runs on the first training batch)")
        z = z.float()
        if self.kind == "fsq":
            return self.lib(z)[1].long().unsqueeze(-1)
        cosine = self.cfg.use_cosine_sim
        flat = self.lib.project_in(z.reshape(-1, z.shape[-1]))
        if self.kind == "vq":
            query = F.normalize(flat, dim=-1, eps=1e-6) if cosine else flat
            return nearest_code(query, self.lib.codebook, cosine).view(*z.shape[:-1], 1)
        residual, levels = flat, []
        for layer in self.lib.layers:
            book = layer.codebook
            query = F.normalize(residual, dim=-1, eps=1e-6) if cosine else residual
            idx = nearest_code(query, book, cosine)
            # Same residual update as ResidualVQ: subtract the chosen (unit-norm if cosine) code.
            residual = residual - book[idx]
            levels.append(idx)
        return torch.stack(levels, -1).view(*z.shape[:-1], self.levels)
