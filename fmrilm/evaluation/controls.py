"""Shuffled-brain control: give each test item the brain input of a different test item.

The control keeps everything but the pairing, so any score it reaches comes from the model's
priors (frequent captions, common answers) rather than from the brain data. The pairing is a
seeded derangement: no item keeps its own input. With `groups` (e.g. the stimulus of each trial)
an item also never receives another trial of its own stimulus, which would leak the answer.

One derangement's score depends on which items happened to be paired; the evaluation averages the
control over several (:func:`derangements`, each from its own seed stream).
"""

from __future__ import annotations

import numpy as np

from fmrilm.errors import InputError


def derangement(n: int, seed=0, groups=None) -> np.ndarray:
    """A permutation `perm` of range(n) with ``groups[perm[i]] != groups[i]`` for every i.

    Without `groups` every item is its own group, so ``perm[i] != i``. Starts from a uniform random
    permutation and repairs each conflict by swapping with a random position where the swap is
    conflict-free for both; deterministic for a seed (an int or a ``numpy.random.SeedSequence``).

    Raises
    ------
    InputError
        When no such permutation exists (n < 2, or one group holds more than half the items).
    """
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if groups.shape != (n,):
        raise InputError("derangement", "groups", f"shape {groups.shape}, expected ({n},)")
    largest = int(np.unique(groups, return_counts=True)[1].max()) if n else 0
    if n < 2 or 2 * largest > n:
        raise InputError("derangement", "groups", f"{n} items with a largest group of {largest}: "
                         "no pairing avoids every item's own group")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    for i in np.flatnonzero(groups[perm] == groups):
        if groups[perm[i]] != groups[i]:  # already fixed by an earlier swap
            continue
        # j works if i can take perm[j] and j can take perm[i].
        ok = np.flatnonzero((groups[perm] != groups[i]) & (groups[perm[i]] != groups))
        j = rng.choice(ok)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def derangements(n: int, count: int, seed: int = 0, groups=None) -> np.ndarray:
    """`count` derangements ``[count, n]`` (:func:`derangement`), the d-th seeded by the d-th child of
    ``SeedSequence(seed)``, so the streams are independent and adding one leaves the others as they are.

    Raises
    ------
    InputError
        When `count` < 1 (``n_derangements`` of the evaluation config), or as :func:`derangement`.
    """
    if count < 1:
        raise InputError("config", "n_derangements", f"{count}; the shuffled control needs at least 1")
    return np.stack([derangement(n, stream, groups) for stream in np.random.SeedSequence(seed).spawn(count)])


def shuffled_control(items, seed: int = 0, groups=None) -> list:
    """`items` reordered by :func:`derangement`: element i is the input of another item."""
    items = list(items)
    return [items[j] for j in derangement(len(items), seed, groups)]
