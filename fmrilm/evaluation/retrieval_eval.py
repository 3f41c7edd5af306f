"""Retrieval evaluation (MindEye protocol), the ridge caption decoder and the caption bank's ceiling.

Heads trained on the training stimuli (every subject, repeats averaged), scored on the test items:

- ``brain_embedder_tokens``: :func:`~fmrilm.retrieval.brain_embedder.train_brain_embedder` on the
  code vectors of the discrete brain tokens;
- ``continuous_tokens``: the same head on the pre-quantization encodings (the CorText-style
  ablation, :func:`fmrilm.tokenizer.features.continuous_features`);
- ``ridge``: the field's linear decoder, ridge from vertex activity to MiniLM caption embeddings
  (:class:`~fmrilm.evaluation.baselines.RidgeCaptionDecoder`), which also gives the ridge captions
  (nearest caption of the training bank).

n-way retrieval runs per subject (one row per stimulus, candidates with distinct captions, as the
protocol needs) and is averaged over subjects; n is ``min(n_way, distinct test captions)``. Each
head beside the ridge carries ``top1_minus_ridge_ci95``: a 95 % bootstrap interval of its
brain→caption top-1 minus the ridge's, resampling the query stimuli (both scored on the same draws).

:func:`bank_ceiling` is the SemScore of the best bank caption per item: no decoder that answers
with a caption of the bank (the ridge decoder, the retrieval heads, the ideal observer) can exceed it.
"""

from __future__ import annotations

import numpy as np

from fmrilm.errors import InputError
from fmrilm.evaluation.baselines import RidgeCaptionDecoder
from fmrilm.evaluation.retrieval_metrics import average_results, n_way_retrieval
from fmrilm.retrieval.brain_embedder import train_brain_embedder


def per_subject_n_way(brain: np.ndarray, captions: np.ndarray, subject: np.ndarray, groups, cfg
                      ) -> tuple[dict, np.ndarray]:
    """n-way retrieval of each subject's rows, averaged over subjects (std over draws dropped).

    Returns the averaged result and each row's share of the brain→caption top-1, weighted so that
    the mean over all rows is the subject-averaged top-1 (the unit an interval resamples)."""
    groups = np.asarray(groups, object)
    results, share = [], np.zeros(len(brain))
    subjects = np.unique(subject)
    for s in subjects:
        rows = subject == s
        result = n_way_retrieval(brain[rows], captions[rows], cfg.n_way, cfg.n_draws, seed=cfg.seed,
                                 groups=list(groups[rows]), per_query=True)
        share[rows] = result["per_query"]["brain_to_caption"]["top1"] * len(brain) / (len(subjects) * rows.sum())
        results.append(result)
    return average_results(results), share


def top1_difference_ci(model_share, baseline_share, stimulus, confidence: float = 0.95) -> list[float]:
    """Bootstrap interval of ``top1(model) - top1(baseline)`` from per-query shares on the same
    draws (:func:`per_subject_n_way`), resampling the query stimuli, each with its rows of every
    subject (:func:`~fmrilm.evaluation.uncertainty.paired_difference_ci` with ``clusters``)."""
    from fmrilm.evaluation.uncertainty import paired_difference_ci

    return list(paired_difference_ci(model_share, baseline_share, confidence=confidence, clusters=stimulus))


def bank_ceiling(references, bank_captions) -> dict:
    """Per item, the SemScore of the bank caption that scores best against the item's references.

    SemScore (:func:`~fmrilm.evaluation.captions.semscore`) is the mean cosine of a caption to each
    reference; with unit-norm embeddings that is the dot product with the references' mean
    embedding, so one matrix product scores every bank caption for every item.

    Parameters
    ----------
    references : list of (str or list of str)
        Each item's reference captions.
    bank_captions : list of str
        The candidate captions (duplicates allowed).

    Returns
    -------
    dict
        ``{"semscore": mean over items, "per_item": list of float, "n": int, "best": list of str}``.
    """
    from fmrilm.textembed import embed_texts

    references = [[r] if isinstance(r, str) else list(r) for r in references]
    bank = sorted({str(c) for c in bank_captions})
    if not bank or not references or any(not refs for refs in references):
        raise InputError("bank_ceiling", "captions", f"{len(bank)} bank captions, {len(references)} items; "
                         "need a bank and at least one reference per item")
    owner = np.repeat(np.arange(len(references)), [len(r) for r in references])
    emb = embed_texts([r for refs in references for r in refs]).astype(np.float64)
    mean_reference = np.zeros((len(references), emb.shape[1]))
    np.add.at(mean_reference, owner, emb)
    mean_reference /= np.bincount(owner)[:, None]
    scores = mean_reference @ embed_texts(bank).astype(np.float64).T
    best = scores.argmax(1)
    per_item = scores[np.arange(len(references)), best]
    return {"semscore": float(per_item.mean()), "per_item": per_item.tolist(), "n": len(references),
            "best": [bank[j] for j in best]}


def retrieval_section(train: dict, test: dict, bank_captions, bank_embeddings, cfg,
                      progress: bool = False) -> tuple[dict, list[str], dict, dict]:
    """Retrieval scores of each head and the ridge decoder's captions.

    Parameters
    ----------
    train, test : dict
        ``{"tokens": [N, F], "continuous": [N, F'], "vertices": [N, V], "text": [N, 384],
        "subject": [N]}`` feature sets of the training and test items; `test` also ``"caption"``
        (list of str [N], the text behind ``"text"``: equal captions share one candidate).
    bank_captions, bank_embeddings
        The training caption bank for the ridge decoder.

    Returns
    -------
    section : dict
    ridge_captions : list of str
        The bank caption nearest to each test item's predicted embedding.
    embeddings : dict
        Test-item brain embeddings of each head (for the examples' retrieval hits).
    heads : dict
        The trained brain embedders by name (reused on other subjects' tokens).
    """
    section, embeddings, heads, shares = {}, {}, {}, {}
    for name, key in (("brain_embedder_tokens", "tokens"), ("continuous_tokens", "continuous")):
        model, history = train_brain_embedder(train[key], train["text"], cfg.embedder, progress=progress)
        heads[name] = model
        embeddings[name] = model.embed(test[key])
        result, shares[name] = per_subject_n_way(embeddings[name], test["text"], test["subject"], test["caption"], cfg)
        section[name] = {**result, "final_train_loss": history[-1]}
    ridge = RidgeCaptionDecoder().fit(train["vertices"], train["text"])
    embeddings["ridge"] = ridge.predict(test["vertices"])
    result, shares["ridge"] = per_subject_n_way(embeddings["ridge"], test["text"], test["subject"], test["caption"],
                                                cfg)
    section["ridge"] = {**result, "alpha": ridge.alpha}
    for name in ("brain_embedder_tokens", "continuous_tokens"):
        section[name]["top1_minus_ridge_ci95"] = top1_difference_ci(shares[name], shares["ridge"], test["stimulus"])
    captions = ridge.decode(test["vertices"], bank_captions, bank_embeddings)
    return section, captions, embeddings, heads
