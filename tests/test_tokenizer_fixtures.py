"""Shared helpers for the tokenizer tests (no tests here): a toy atlas and synthetic grouped scans.

The toy atlas has few parcels of deliberately unequal sizes plus medial-wall vertices, so padding
and masking are exercised without the 20484-vertex fsaverage5 atlas.
"""

from __future__ import annotations

import numpy as np

from fmrilm.brain.atlas import Atlas, Parcel
from fmrilm.tokenizer.config import QuantizerConfig, TokenizerConfig

PARCEL_SIZES = (7, 12, 5, 9, 11, 6)


def toy_atlas(sizes=PARCEL_SIZES, name="toy_atlas", seed=0) -> Atlas:
    """Atlas with len(sizes) parcels of the given vertex counts plus 3 medial-wall vertices, shuffled."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, i + 1) for i, n in enumerate(sizes)] + [np.zeros(3, int)])
    labels = rng.permutation(labels)
    n = labels.size
    half = len(sizes) // 2
    parcels = [Parcel(i + 1, f"toy_{i}", "LH" if i < half else "RH", "Vis") for i in range(len(sizes))]
    faces = np.stack([np.arange(n - 2), np.arange(1, n - 1), np.arange(2, n)], 1)
    return Atlas(name, parcels, labels, rng.normal(size=(n, 3)), faces, (n // 2, n - n // 2))


def tiny_config(kind="vq", K=64, **quantizer) -> TokenizerConfig:
    levels = quantizer.pop("levels", 2 if kind == "rvq" else 1)
    if kind == "fsq":
        quantizer.setdefault("fsq_levels", (4, 4, 4))
    return TokenizerConfig(hidden_dim=16, code_dim=8, contrastive="clip", contrastive_weight=0.1, text_dim=12,
                           quantizer=QuantizerConfig(kind=kind, codebook_size=K, levels=levels, **quantizer))


def low_rank_betas(atlas: Atlas, n: int, rank: int = 3, seed: int = 0) -> np.ndarray:
    """z-scored-like vertex maps ``[n, V]`` with low-rank structure per parcel (so codes can learn it)."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, atlas.n_vertices))
    noise = 0.1 * rng.normal(size=(n, atlas.n_vertices))
    return (rng.normal(size=(n, rank)) @ basis + noise).astype(np.float32)
