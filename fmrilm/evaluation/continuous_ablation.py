"""Continuous-token ablation (CorText-style): the tokenizer's region encodings without quantization.

CorText feeds the LM continuous MLP outputs per region; fmrilm quantizes them. The cheap, honest
comparison here holds everything else fixed: the same region encoders, the same retrieval head and
training items, once on the pre-quantization encoder outputs ``[P, C]`` per scan (this module) and
once on the code vectors of the discrete tokens (:func:`token_features`). The gap between the two is
what quantization costs (or gains) for retrieval; the LM itself is not retrained on continuous input.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def continuous_features(tokenizer, betas: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Pre-quantization region encodings of vertex maps ``[N, V]`` → float32 ``[N, P·C]``."""
    out = []
    for start in range(0, len(betas), batch_size):
        x = tokenizer.group_vertices(betas[start:start + batch_size])
        tokenizer.check_input(x)
        out.append(tokenizer.encoder(x, tokenizer.mask).reshape(len(x), -1).float().numpy())
    return np.concatenate(out)


@torch.no_grad()
def token_features(tokenizer, tokens: np.ndarray) -> np.ndarray:
    """Code vectors of discrete tokens ``[N, P·L]`` → float32 ``[N, P·L·C]`` (what the LM is given)."""
    table = tokenizer.code_embeddings().float().numpy()
    return table[np.asarray(tokens, np.int64)].reshape(len(tokens), -1)
