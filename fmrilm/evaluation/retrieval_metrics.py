"""N-way retrieval accuracy between brain and caption embeddings (the MindEye protocol).

Row i of the brain embeddings and row i of the caption embeddings belong to the same test item.
One draw picks `n_way` items without replacement and scores all n × n pairs by cosine similarity;
brain→caption asks, for each brain row, whether its own caption is among the `k` best of the n
captions, and caption→brain asks the same the other way round. Accuracies are averaged over
`n_draws` seeded draws (MindEye: 300-way, 30 draws).

Ties count against the query (an item is in the top k only if fewer than k other candidates
score at least as high), so a constant predictor scores 0, never 1.

Pass one row per stimulus (average repeated trials first): two rows with the same caption in one
draw would make the task ambiguous.

>>> n_way_retrieval(brain, captions)["brain_to_caption"]["top1"]
0.43
"""

from __future__ import annotations

import numpy as np

from fmrilm.errors import InputError, check_finite


def _unit_rows(values, field: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(field, "shape", f"{arr.shape}; expected [N, D]")
    check_finite(arr, field)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.where(norms > 0, norms, 1.0)


def topk_hits(similarity: np.ndarray, ks) -> dict[int, np.ndarray]:
    """For a square [n, n] similarity (row = query, diagonal = correct), whether each query's
    correct candidate is within the top k, for each k in `ks` (ties count against the query)."""
    correct = np.diag(similarity)[:, None]
    # Candidates other than the correct one that score at least as high (the diagonal always does).
    rank = (similarity >= correct).sum(axis=1) - 1
    return {k: rank < k for k in ks}


def n_way_retrieval(brain, captions, n_way: int = 300, n_draws: int = 30, ks=(1, 5), seed: int = 0) -> dict:
    """Top-k accuracy of n-way retrieval in both directions, averaged over seeded draws.

    Parameters
    ----------
    brain, captions : float [N, D]
        Paired embeddings (row i of each is test item i); normalised here.
    n_way : int
        Candidates per draw; must not exceed N.
    n_draws : int
    ks : tuple of int
    seed : int

    Returns
    -------
    dict
        ``{"brain_to_caption": {"top1": mean, "top1_std": std over draws, ...},
        "caption_to_brain": {...}, "n_way", "n_draws", "n_items", "chance": {"top1": 1/n, ...}}``
    """
    b, c = _unit_rows(brain, "brain"), _unit_rows(captions, "captions")
    if b.shape != c.shape:
        raise InputError("captions", "shape", f"{c.shape} does not pair with brain {b.shape}")
    n_items = len(b)
    if not 2 <= n_way <= n_items:
        raise InputError("brain", "rows", f"{n_items} test items cannot make {n_way}-way draws (need 2 <= n_way <= N)")
    if n_draws < 1 or any(not 1 <= k <= n_way for k in ks):
        raise InputError("n_way_retrieval", "n_draws/ks",
                         f"n_draws={n_draws}, ks={ks} (need n_draws >= 1, 1 <= k <= n_way)")
    rng = np.random.default_rng(seed)
    scores = {"brain_to_caption": {k: [] for k in ks}, "caption_to_brain": {k: [] for k in ks}}
    for _ in range(n_draws):
        pick = rng.choice(n_items, size=n_way, replace=False)
        sim = b[pick] @ c[pick].T
        for direction, matrix in (("brain_to_caption", sim), ("caption_to_brain", sim.T)):
            for k, hits in topk_hits(matrix, ks).items():
                scores[direction][k].append(hits.mean())
    out = {direction: {key: value for k, draws in per_k.items()
                       for key, value in ((f"top{k}", float(np.mean(draws))), (f"top{k}_std", float(np.std(draws))))}
           for direction, per_k in scores.items()}
    out.update(n_way=n_way, n_draws=n_draws, n_items=n_items, seed=seed,
               chance={f"top{k}": k / n_way for k in ks})
    return out
