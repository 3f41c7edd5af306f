"""A tokenizer's features of scans: token ids of vertex maps, their code vectors, and the
pre-quantization region encodings.

:func:`tokenize_betas` and :func:`token_features` give what the LM and the brain embedders see of a
scan (the search indexes, the evaluation, stimulation and ``fmrilm ask`` all go through them);
:func:`continuous_features` is the same region encoders without quantization, for the evaluation's
CorText-style ablation: everything else held fixed (the same retrieval head and training items), the
gap between it and :func:`token_features` is what quantization costs (or gains) for retrieval. An LM
trained on continuous input (``llm.brain_input: continuous``) reads :func:`encode_betas`'s encoder
outputs.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm


@torch.no_grad()
def encode_betas(tokenizer, betas: np.ndarray, batch_size: int = 256,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Vertex maps ``[N, V]`` → token ids ``[N, P·L]`` (int64) and the encoder outputs ``[N, P, d]``
    (float32; what an LM with continuous brain input reads) with a task tokenizer."""
    tokens, latents = [], []
    for start in tqdm(range(0, len(betas), batch_size), desc="tokenize", disable=not progress):
        ids, z = tokenizer.encode_with_latents(tokenizer.group_vertices(betas[start:start + batch_size]))
        tokens.append(ids.numpy())
        latents.append(z.numpy())
    return np.concatenate(tokens).astype(np.int64), np.concatenate(latents)


def tokenize_betas(tokenizer, betas: np.ndarray, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Vertex maps ``[N, V]`` → token ids ``[N, P·L]`` (int64) with a task tokenizer."""
    return encode_betas(tokenizer, betas, batch_size, progress)[0]


@torch.no_grad()
def token_features(tokenizer, tokens: np.ndarray) -> np.ndarray:
    """Code vectors of discrete tokens ``[N, P·L]`` → float32 ``[N, P·L·C]`` (what the LM is given)."""
    table = tokenizer.code_embeddings().float().numpy()
    return table[np.asarray(tokens, np.int64)].reshape(len(tokens), -1)


@torch.no_grad()
def continuous_features(tokenizer, betas: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Pre-quantization region encodings of vertex maps ``[N, V]`` → float32 ``[N, P·C]``."""
    out = []
    for start in range(0, len(betas), batch_size):
        x = tokenizer.group_vertices(betas[start:start + batch_size])
        tokenizer.check_input(x)
        out.append(tokenizer.encoder(x, tokenizer.mask).reshape(len(x), -1).float().numpy())
    return np.concatenate(out)
