"""The order a training stage visits its samples in: a pure function of (seed, step).

Every rank computes its own micro-batch from the same seeded permutation, so ranks agree without
communicating, and a run resumed at step N draws exactly the batches an uninterrupted run would
(see ``fmrilm.engine``, whose checkpoints store no data-loader state).
"""

from __future__ import annotations

import numpy as np


def epoch_order(n: int, epoch: int, global_batch: int, seed: int, lengths: np.ndarray | None = None,
                bucket_batches: int = 0) -> np.ndarray:
    """The order in which epoch `epoch` visits positions ``0..n-1``: a seeded permutation.

    With `lengths` and ``bucket_batches > 1`` the permutation is cut into windows of that many global
    batches, each window sorted by length and its batches shuffled again, so a batch pads to a length
    near its own samples' (the "sorted mega-batch" of fairseq / Megatron) while every epoch still
    visits every sample once and every rank takes the same number of steps.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if lengths is not None and bucket_batches > 1:
        order = _length_bucketed(order, np.asarray(lengths), global_batch * bucket_batches, global_batch, rng)
    return order


def micro_batch_positions(n: int, step: int, micro: int, rank: int, world: int, seed: int,
                          lengths: np.ndarray | None = None, bucket_batches: int = 0) -> np.ndarray:
    """Positions of one rank's micro-batch: a pure function of (seed, step), so resuming is exact.

    Each epoch is :func:`epoch_order`; the global batch of a step is cut into per-rank slices.
    """
    global_batch = micro * world
    epoch, offset = divmod(step, max(1, n // global_batch))
    order = epoch_order(n, epoch, global_batch, seed, lengths, bucket_batches)
    start = offset * global_batch + rank * micro
    return order[np.arange(start, start + micro) % n]


def visited_positions(n: int, micro_steps: int, micro: int, world: int, seed: int,
                      lengths: np.ndarray | None = None, bucket_batches: int = 0) -> np.ndarray:
    """Sorted positions that micro-steps ``0..micro_steps-1`` of :func:`micro_batch_positions` take on
    any rank: a run shorter than an epoch needs only these samples prepared."""
    global_batch = micro * world
    per_epoch = max(1, n // global_batch)
    if micro_steps >= per_epoch:
        return np.arange(n)
    order = epoch_order(n, 0, global_batch, seed, lengths, bucket_batches)
    return np.unique(order[np.arange(micro_steps * global_batch) % n])


def _length_bucketed(order: np.ndarray, lengths: np.ndarray, window: int, global_batch: int, rng) -> np.ndarray:
    """`order` with each window of positions sorted by length and its global batches shuffled."""
    out = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches = [chunk[i:i + global_batch] for i in range(0, len(chunk), global_batch)]
        out.extend(batches[i] for i in rng.permutation(len(batches)))
    return np.concatenate(out)
