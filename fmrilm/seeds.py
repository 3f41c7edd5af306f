"""Seeded randomness in one place: the named random streams, and the order a training stage visits its samples in.

Named streams
-------------
Every seeded draw of the package comes from :func:`stream` (or :func:`spawned_stream`) under a name
in :data:`STREAMS` (:data:`SPAWNED`), never from a magic number at the call site: the name says what
the draw is for, and this registry is the one place to see which keys are taken. ``stream(seed,
name, *ids)`` is ``np.random.default_rng([seed, STREAMS[name], *ids])`` -- the very key each call
site used before the registry existed, so every figure of a published run is unchanged.

Because those keys are kept, some ids are shared by names that draw for unrelated purposes (e.g.
``[seed, 3]`` orders the evaluation's items and thins stage mixtures). The shares are listed, each
name, in :data:`LEGACY_SHARED`, and a test holds every other name to an id of its own: a new stream
takes an id that no other name holds, never one already listed.

Two kinds of draw are keyed by a counter rather than a name and stay outside the registry:
``[seed, epoch]`` (:func:`epoch_order`, :mod:`fmrilm.corpus.reader`) and ``[seed, k]`` (the
k-shot adaptation fit of :mod:`fmrilm.tokenizer.adapt`); the corpus's per-sample generators
(:func:`fmrilm.corpus.phrasing.sample_rng`) hash their identifiers into the key.

Sample order
------------
The order a training stage visits its samples in is a pure function of (seed, step). Every rank
computes its own micro-batch from the same seeded permutation, so ranks agree without
communicating, and a run resumed at step N draws exactly the batches an uninterrupted run would
(see ``fmrilm.engine``, whose checkpoints store no data-loader state).
"""

from __future__ import annotations

import numpy as np

# name → stream id: the key of ``stream(seed, name, *ids)`` is ``[seed, id, *ids]``.
STREAMS: dict[str, int] = {
    # brain.task_world: one stream per purpose, then (subject, session) ids
    "task_world.scenes": 0,
    "task_world.group": 1,
    "task_world.noise_basis": 2,
    "task_world.subject": 3,
    "task_world.schedule": 4,
    "task_world.trial_noise": 5,
    "task_world.localizer": 6,
    "task_world.text_scenes": 7,
    # brain.splits
    "splits.stimuli": 1,  # which familiar stimuli are val / test
    "splits.subjects": 2,  # ids: (n_subjects,); which subjects are held out
    # corpus.build: the shuffled order a split's samples are written to shards in
    "corpus.shard_order": 7,  # ids: (split index,), placed BEFORE the id (see _IDS_FIRST)
    # stages
    "joint.direction": 2,  # which stage-2 samples run text → brain
    "lm.task_weights": 3,  # fractional task weights: which samples get the extra copy
    # retrieval.search
    "search.train_items": 7,  # the train stimuli each subject's embedder rows are drawn from
    # evaluation
    "eval.items": 3,  # the (subject, stimulus) items captioned and questioned
    "eval.vqa_questions": 11,
    "eval.fewshot_shots": 13,
    "eval.adaptation_pool": 17,  # the held-out subject's k adaptation stimuli
    "eval.rest_fewshot_examples": 19,  # ids: (phenotype, k, draw); the k labelled few-shot runs
    "eval.rest_fewshot_queries": 23,  # ids: (phenotype,); the test subjects answering
    # stimulation
    "stimulation.patches": 0,  # control-patch placement
    "stimulation.scans": 1,  # the scans perturbed
    "stimulation.bootstrap": 2,  # every interval's resamples
}

# Names whose published key puts the ids before the stream id: ``[seed, *ids, id]``.
_IDS_FIRST = frozenset({"corpus.shard_order"})

# Stream ids shared by unrelated names, kept so that the published run (`make demo`) draws exactly
# what it drew before the registry; nothing may join a group, and no other name may share an id.
LEGACY_SHARED: dict[int, tuple[str, ...]] = {
    0: ("task_world.scenes", "stimulation.patches"),
    1: ("task_world.group", "splits.stimuli", "stimulation.scans"),
    2: ("task_world.noise_basis", "splits.subjects", "joint.direction", "stimulation.bootstrap"),
    3: ("task_world.subject", "lm.task_weights", "eval.items"),
    7: ("task_world.text_scenes", "corpus.shard_order", "search.train_items"),
}

# name → spawn id: ``spawned_stream(seed, name, *ids)`` is
# ``default_rng(SeedSequence(seed, spawn_key=(id, *ids)))`` (a key space of its own: brain.rest_world).
SPAWNED: dict[str, int] = {
    "rest_world.subject": 0,  # ids: (subject index,)
    "rest_world.site": 1,
    "rest_world.vertex": 2,  # ids: (subject index,)
}


def stream_key(seed: int, name: str, *ids: int) -> list[int]:
    """The entropy of named stream `name` for `seed` and `ids` (KeyError names the known streams)."""
    if name not in STREAMS:
        raise KeyError(f"no random stream {name!r}; known: {sorted(STREAMS)}")
    ids_ = [int(i) for i in ids]
    return [int(seed), *ids_, STREAMS[name]] if name in _IDS_FIRST else [int(seed), STREAMS[name], *ids_]


def stream(seed: int, name: str, *ids: int) -> np.random.Generator:
    """The generator of named stream `name` (:data:`STREAMS`) for `seed`, further keyed by `ids`."""
    return np.random.default_rng(stream_key(seed, name, *ids))


def spawned_stream(seed: int, name: str, *ids: int) -> np.random.Generator:
    """The generator of spawned stream `name` (:data:`SPAWNED`) for `seed`, further keyed by `ids`."""
    if name not in SPAWNED:
        raise KeyError(f"no spawned random stream {name!r}; known: {sorted(SPAWNED)}")
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(SPAWNED[name], *map(int, ids))))


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
