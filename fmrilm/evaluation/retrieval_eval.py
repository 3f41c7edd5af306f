"""Retrieval evaluation (MindEye protocol) and the ridge caption decoder, on the same items.

Heads trained on the training stimuli (every subject, repeats averaged), scored on the test items:

- ``brain_embedder_tokens``: :func:`~fmrilm.retrieval.brain_embedder.train_brain_embedder` on the
  code vectors of the discrete brain tokens;
- ``continuous_tokens``: the same head on the pre-quantization encodings (the CorText-style
  ablation, :mod:`fmrilm.evaluation.continuous_ablation`);
- ``ridge``: the field's linear decoder, ridge from vertex activity to MiniLM caption embeddings
  (:class:`~fmrilm.evaluation.baselines.RidgeCaptionDecoder`), which also gives the ridge captions
  (nearest caption of the training bank).

n-way retrieval runs per subject (one row per stimulus, as the protocol needs) and is averaged over
subjects; n is ``min(n_way, number of test stimuli)``.
"""

from __future__ import annotations

import numpy as np

from fmrilm.evaluation.baselines import RidgeCaptionDecoder
from fmrilm.evaluation.retrieval_metrics import n_way_retrieval
from fmrilm.retrieval.brain_embedder import train_brain_embedder


def per_subject_n_way(brain: np.ndarray, captions: np.ndarray, subject: np.ndarray, cfg) -> dict:
    """n-way retrieval of each subject's rows, averaged over subjects (std over draws dropped)."""
    results = []
    for s in np.unique(subject):
        rows = subject == s
        results.append(n_way_retrieval(brain[rows], captions[rows], min(cfg.n_way, int(rows.sum())),
                                       cfg.n_draws, seed=cfg.seed))
    out = {d: {k: float(np.mean([r[d][k] for r in results])) for k in results[0][d] if not k.endswith("_std")}
           for d in ("brain_to_caption", "caption_to_brain")}
    out.update(n_way=results[0]["n_way"], n_draws=cfg.n_draws, n_subjects=len(results),
               chance=results[0]["chance"])
    return out


def retrieval_section(train: dict, test: dict, bank_captions, bank_embeddings, cfg,
                      progress: bool = False) -> tuple[dict, list[str], dict, dict]:
    """Retrieval scores of each head and the ridge decoder's captions.

    Parameters
    ----------
    train, test : dict
        ``{"tokens": [N, F], "continuous": [N, F'], "vertices": [N, V], "text": [N, 384],
        "subject": [N]}`` feature sets of the training and test items.
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
    section, embeddings, heads = {}, {}, {}
    for name, key in (("brain_embedder_tokens", "tokens"), ("continuous_tokens", "continuous")):
        model, history = train_brain_embedder(train[key], train["text"], cfg.embedder, progress=progress)
        heads[name] = model
        embeddings[name] = model.embed(test[key])
        section[name] = {**per_subject_n_way(embeddings[name], test["text"], test["subject"], cfg),
                         "final_train_loss": history[-1]}
    ridge = RidgeCaptionDecoder().fit(train["vertices"], train["text"])
    embeddings["ridge"] = ridge.predict(test["vertices"])
    section["ridge"] = {**per_subject_n_way(embeddings["ridge"], test["text"], test["subject"], cfg),
                        "alpha": ridge.alpha}
    captions = ridge.decode(test["vertices"], bank_captions, bank_embeddings)
    return section, captions, embeddings, heads
