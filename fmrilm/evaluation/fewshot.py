"""Few-shot evaluation: k-shot in-context captioning (adaptation to a held-out subject, the other
few-shot setting, is :mod:`fmrilm.evaluation.subject_adaptation`).

In-context: each query item's prompt is prefixed with k examples (scan + reference caption) of
*training* stimuli seen by the same subject, in the corpus's shot format
(:func:`fmrilm.corpus.phrasing.with_shots`), and the caption SemScore is compared with the
zero-shot score on the same items. A k whose prompts do not fit the model's context is reported as
such rather than truncated.

A captioner with a retriever (:class:`~fmrilm.retrieval.captioner.Captioner`) prefixes the query of
every prompt, k-shot or not, with its scan's retrieved captions
(:mod:`fmrilm.retrieval.caption_prompts`), so every k is scored twice: with retrieval (the model as
deployed) and without it, and the change from k = 0 to k ≥ 1 is the examples' effect under either,
not a lost prefix.
"""

from __future__ import annotations

import numpy as np

from fmrilm.corpus.phrasing import with_shots
from fmrilm.errors import InputError
from fmrilm.evaluation.captions import semscore
from fmrilm.evaluation.task_eval import CAPTION_PROMPT, TaskItems
from fmrilm.seeds import stream


def in_context(captioner, items: TaskItems, shot_tokens: dict, shot_captions: dict, ks, cfg,
               progress: bool = False, shot_latents: dict | None = None) -> dict:
    """Caption SemScore with k in-context examples, for each k in `ks`.

    Parameters
    ----------
    items : TaskItems
        Query items (a subset of the test items).
    shot_tokens : dict
        subject → tokens [n_train, P·L] of that subject's training stimuli (averaged repeats).
    shot_captions : dict
        subject → list of the reference caption of each of those stimuli.
    ks : sequence of int
    shot_latents : dict, optional
        subject → encoder outputs [n_train, P, d] of the same stimuli, for a model reading continuous
        brain input (with ``items.latents``).

    Returns
    -------
    dict
        Per k: ``semscore``, ``n``, ``example`` (one caption) and ``retrieval`` (whether the prompts
        carried retrieved captions); with a retriever also ``no_retrieval`` (the same without them).
        A k that does not fit the context is ``{"status": "skipped", "reason"}``.
    """
    rng = stream(cfg.seed, "eval.fewshot_shots")
    shots_of = {}
    for i, s in enumerate(items.subject):
        shots_of[i] = rng.permutation(len(shot_captions[int(s)]))[: max(ks)]
    references = items.references()
    out = {}
    for k in ks:
        prompts, tokens, latents = [], [], []
        for i, s in enumerate(items.subject):
            chosen = shots_of[i][:k]
            examples = [(CAPTION_PROMPT, shot_captions[int(s)][j]) for j in chosen]
            prompts.append(with_shots(CAPTION_PROMPT, examples) if k else CAPTION_PROMPT)
            tokens.append(np.concatenate([shot_tokens[int(s)][chosen], items.tokens[i][None]]))
            if items.latents is not None and shot_latents is not None:
                latents.append(np.concatenate([shot_latents[int(s)][chosen], items.latents[i][None]]))
        scans = (tokens, latents or None)
        retrieval = captioner.retriever is not None
        out[str(k)] = _score(captioner, scans, prompts, references, retrieval, cfg, progress)
        if retrieval:
            out[str(k)]["no_retrieval"] = _score(captioner, scans, prompts, references, False, cfg, progress)
    return out


def _score(captioner, scans, prompts, references, retrieve: bool, cfg, progress) -> dict:
    """SemScore of greedy captions of the prompts, or a skip reason when they do not fit the context."""
    try:
        captions = captioner.generate(scans[0], prompts, retrieve, max_new_tokens=cfg.max_new_tokens,
                                      batch_size=cfg.batch_size, progress=progress, brain_latents=scans[1])
    except InputError as err:
        return {"status": "skipped", "reason": str(err), "retrieval": retrieve}
    result = semscore(captions, references)
    return {"semscore": result["semscore"], "n": result["n"], "example": captions[0], "retrieval": retrieve}
