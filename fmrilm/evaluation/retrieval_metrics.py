"""N-way retrieval accuracy between brain and caption embeddings (the MindEye protocol).

Row i of the brain embeddings and row i of the caption embeddings belong to the same test item.
One draw picks `n_way` distinct captions without replacement; brain→caption asks, for each brain
row of those items, whether its own caption is among the `k` best of the n candidates by cosine
similarity, and caption→brain asks the same the other way round. Accuracies are averaged over
`n_draws` seeded draws (MindEye: 300-way, 30 draws).

Candidates are distinct captions. Items whose captions are identical (pass their caption text as
`groups`) would otherwise tie with each other and let the tie decide top-1, so a draw keeps one
candidate per caption: every item of a drawn caption is a query, and its candidates are itself
plus one seeded representative item of each other drawn caption. When `n_way` is at least the
number of distinct captions, every draw would be the same set, so the protocol runs once, n-way
over all of them; the result says what ran (``n_way``, ``n_draws``, ``n_distinct``).

Ties count against the query (an item is in the top k only if fewer than k other candidates
score at least as high), so a constant predictor scores 0, never 1.

>>> n_way_retrieval(brain, captions, groups=caption_texts)["brain_to_caption"]["top1"]
0.43
"""

from __future__ import annotations

import numpy as np

from fmrilm.errors import InputError, check_finite

DIRECTIONS = ("brain_to_caption", "caption_to_brain")


def _unit_rows(values, field: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(field, "shape", f"{arr.shape}; expected [N, D]")
    check_finite(arr, field)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.where(norms > 0, norms, 1.0)


def topk_hits(similarity: np.ndarray, ks, correct=None) -> dict[int, np.ndarray]:
    """Whether each query's correct candidate is within the top k, for each k in `ks`.

    Parameters
    ----------
    similarity : float [n, c]
        Row = query, column = candidate.
    ks : iterable of int
    correct : int array [n], optional
        Column of each row's correct candidate; default the diagonal (square `similarity`).
        Ties count against the query.
    """
    rows = np.arange(len(similarity))
    truth = similarity[rows, rows if correct is None else np.asarray(correct)][:, None]
    # Candidates other than the correct one that score at least as high (the correct one always does).
    rank = (similarity >= truth).sum(axis=1) - 1
    return {k: rank < k for k in ks}


def _caption_members(groups, n: int) -> list[np.ndarray]:
    """Items of each distinct caption label (first-appearance order); singletons without labels."""
    if groups is None:
        return list(np.arange(n)[:, None])
    labels = list(groups)
    if len(labels) != n:
        raise InputError("groups", "rows", f"{len(labels)} caption labels for {n} items")
    index: dict = {}
    group = np.array([index.setdefault(label, len(index)) for label in labels], np.int64)
    order = np.argsort(group, kind="stable")
    return np.split(order, np.cumsum(np.bincount(group))[:-1])


def _n_way(block, n: int, n_way: int, n_draws: int, ks, seed: int, groups, per_query: bool) -> dict:
    """The protocol on `n` lazily scored items: ``block(rows, cols)`` scores brain rows against
    caption columns (the diagonal pairs an item with its own caption)."""
    members = _caption_members(groups, n)
    n_distinct = len(members)
    if n_way < 2 or n_distinct < 2:
        raise InputError("n_way_retrieval", "n_way", f"{n_way}-way over {n_distinct} distinct captions "
                         f"({n} items): need n_way >= 2 and at least 2 distinct captions")
    single = n_way >= n_distinct
    n_way, n_draws = (n_distinct, 1) if single else (n_way, n_draws)
    if n_draws < 1 or any(not 1 <= k <= n_way for k in ks):
        raise InputError("n_way_retrieval", "n_draws/ks",
                         f"n_draws={n_draws}, ks={ks} (need n_draws >= 1, 1 <= k <= n_way = {n_way})")
    sizes = np.array([len(m) for m in members])
    rng = np.random.default_rng(seed)
    scores = {d: {k: [] for k in ks} for d in DIRECTIONS}
    share = {d: {k: np.zeros(n) for k in ks} for d in DIRECTIONS}
    for _ in range(n_draws):
        chosen = np.arange(n_distinct) if single else rng.choice(n_distinct, size=n_way, replace=False)
        # Only shared captions consume random numbers, so without duplicates the draws are MindEye's.
        pick = np.array([0 if sizes[g] == 1 else rng.integers(sizes[g]) for g in chosen], np.int64)
        queries = np.concatenate([members[g] for g in chosen])
        own = np.repeat(np.arange(n_way), sizes[chosen])  # each query's caption among the candidates
        # Candidates are columns of the queries' own block: each drawn caption's representative, and
        # the query itself standing for its own caption (one product, so equal scores stay equal).
        column = np.tile(np.cumsum(sizes[chosen]) - sizes[chosen] + pick, (len(queries), 1))
        column[np.arange(len(queries)), own] = np.arange(len(queries))
        sim = block(queries, queries)
        for direction, matrix in (("brain_to_caption", sim), ("caption_to_brain", sim.T)):
            for k, hits in topk_hits(np.take_along_axis(matrix, column, 1), ks, own).items():
                scores[direction][k].append(hits.mean())
                share[direction][k][queries] += hits / len(queries)
    out = {direction: {key: value for k, draws in per_k.items()
                       for key, value in ((f"top{k}", float(np.mean(draws))), (f"top{k}_std", float(np.std(draws))))}
           for direction, per_k in scores.items()}
    out.update(n_way=n_way, n_draws=n_draws, n_distinct=n_distinct, n_items=n, seed=seed,
               chance={f"top{k}": k / n_way for k in ks})
    if per_query:
        # Scaled so the mean over items is the accuracy: an item's share of the draws' accuracies
        # (an item drawn in every draw of equal size gets its hit rate), resampled by the intervals.
        out["per_query"] = {d: {f"top{k}": v * n / n_draws for k, v in per_k.items()} for d, per_k in share.items()}
    return out


def n_way_retrieval(brain, captions, n_way: int = 300, n_draws: int = 30, ks=(1, 5), seed: int = 0,
                    groups=None, per_query: bool = False) -> dict:
    """Top-k accuracy of n-way retrieval in both directions, averaged over seeded draws.

    Parameters
    ----------
    brain, captions : float [N, D]
        Paired embeddings (row i of each is test item i); normalised here.
    n_way : int
        Candidates per draw (>= 2); at least the number of distinct captions runs one draw over all.
    n_draws : int
    ks : tuple of int
        Each within 1..the n-way that runs.
    seed : int
    groups : sequence of hashable [N], optional
        Each item's caption (text or id): items with equal labels share one candidate per draw.
        Default: every item's caption is distinct.
    per_query : bool
        Also return each item's share of the accuracy (``"per_query"``), for intervals over items.

    Returns
    -------
    dict
        ``{"brain_to_caption": {"top1": mean, "top1_std": std over draws, ...},
        "caption_to_brain": {...}, "n_way", "n_draws", "n_distinct", "n_items", "seed",
        "chance": {"top1": 1/n_way, ...}}`` with the n-way and draws that ran, and with `per_query`
        ``"per_query": {direction: {"top1": float [N], ...}}`` whose mean over items is the accuracy.
    """
    b, c = _unit_rows(brain, "brain"), _unit_rows(captions, "captions")
    if b.shape != c.shape:
        raise InputError("captions", "shape", f"{c.shape} does not pair with brain {b.shape}")
    return _n_way(lambda rows, cols: b[rows] @ c[cols].T, len(b), n_way, n_draws, ks, seed, groups, per_query)


def n_way_from_scores(scores, n_way: int, n_draws: int, seed: int = 0, ks=(1, 5), groups=None,
                      per_query: bool = False) -> dict:
    """The same protocol from a square score matrix (row i: item i's scan, column j: candidate j,
    diagonal correct; e.g. log-likelihoods), with the same seeded draws as :func:`n_way_retrieval`."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise InputError("scores", "shape", f"{scores.shape}; expected a square [N, N] matrix")
    check_finite(scores, "scores")
    return _n_way(lambda rows, cols: scores[np.ix_(rows, cols)], len(scores), n_way, n_draws, ks, seed, groups,
                  per_query)


def average_results(results: list[dict]) -> dict:
    """Mean accuracies over runs with the same candidates (e.g. subjects shown the same test
    stimuli); the per-draw stds and per-query shares are dropped, the protocol kept."""
    out = {d: {k: float(np.mean([r[d][k] for r in results])) for k in results[0][d] if not k.endswith("_std")}
           for d in DIRECTIONS}
    out.update({k: results[0][k] for k in ("n_way", "n_draws", "n_distinct", "n_items", "chance")},
               n_subjects=len(results))
    return out
