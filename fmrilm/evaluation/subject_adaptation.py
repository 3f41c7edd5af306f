"""Held-out-subject adaptation: new subject encoders from k scans, codebook and language model frozen.

The corpus holds its last task subject(s) out (``corpus.json`` ``task_fewshot_subjects``), and a
tokenizer never saw them either (the run's splits file holds them out of every fitted component).
For that subject and each k in ``adaptation.ks``,
:func:`fmrilm.tokenizer.adapt.adapt_subject_encoders` fits the region encoders on k of its
*training-split* stimuli (repeats averaged, a seeded order, so smaller k are subsets of larger ones);
then, on its *test* stimuli (repeats averaged), each condition reports

- ``r2_clean``: reconstruction R² against the simulator's noise-free signal, and ``r2``: against the
  averaged scan itself (what the tokenizer was trained to reproduce);
- brain→caption n-way retrieval top-1 (n = min(n_way, test stimuli)) through the run's brain
  embedder applied to the code vectors of the adapted tokens (``brain_embedder``) and through the
  tokenizer's own frozen contrastive read-out (``readout``), when each is available;
- ``semscore``: caption SemScore of the frozen LM's greedy captions from the adapted tokens.

Beside them: k = 0 (the shared encoders, unadapted) and, as a reference, a training subject through
the shared encoders. The LM and every other part of the tokenizer are the same in every row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fmrilm.errors import InputError
from fmrilm.seeds import stream
from fmrilm.tokenizer.adapt import AdaptConfig, adapt_subject_encoders


@dataclass
class SubjectAdaptationConfig:
    """The adaptation section of the evaluation (``adaptation:`` in ``eval_*.yaml``).

    Attributes
    ----------
    ks : tuple of int
        Adaptation set sizes (scans of distinct training stimuli, repeats averaged).
    n_items : int
        Test items captioned per condition for SemScore (retrieval and R² use every test stimulus).
    fit : AdaptConfig
        Optimisation of the subject encoders.
    """

    ks: tuple[int, ...] = (8, 32, 128)
    n_items: int = 16
    fit: AdaptConfig = field(default_factory=AdaptConfig)


def heldout_subject(data, summary: dict, tokenizer) -> tuple[int | None, str]:
    """The held-out task subject to adapt to (its index) or None, and why not.

    The first of ``corpus.json``'s ``task_fewshot_subjects`` is used; it must be one the tokenizer
    left out of its training (not among its ``config.json`` ``provenance.train_subjects``).
    """
    names = summary.get("task_fewshot_subjects") or []
    if not names:
        return None, "the corpus holds no task subject out (splits heldout_task_subjects = 0)"
    index = data.subject_index(names[0])
    if names[0] in (tokenizer.provenance.get("train_subjects") or []):
        return None, (f"the tokenizer trained on {names[0]}: adapting to a subject it saw would not measure "
                      "few-shot transfer")
    return index, ""


def _r2(tokenizer, reconstruction: torch.Tensor, target: np.ndarray) -> float:
    """R² of grouped reconstructions ``[N, P, D]`` against vertex maps `target` over the real slots."""
    from fmrilm.tokenizer.evaluate import R2Accumulator

    acc = R2Accumulator(tokenizer.mask)
    acc.update(reconstruction, tokenizer.group_vertices(target))
    return acc.result()[0]


def score_condition(tokenizer, vertices, clean, text, references, captioner, embedder, cfg, n_items: int) -> dict:
    """Every figure of one (subject, encoders) condition on the test stimuli.

    Parameters
    ----------
    tokenizer : BrainTokenizer
        The shared or an adapted tokenizer.
    vertices, clean : float [N, V]
        Averaged test scans and the noise-free signal (``clean`` may be None for real data).
    text : float [N, 384]
        MiniLM embedding of each test stimulus's first caption.
    references : list of list of str
        Reference captions of each test stimulus.
    captioner : Captioner
        The frozen language model and its retriever.
    embedder : BrainEmbedder or None
        The run's brain embedder over token code vectors.
    cfg : EvalConfig
        ``n_way``, ``n_draws``, ``seed``, ``max_new_tokens``, ``batch_size``.
    n_items : int
        The first `n_items` test stimuli are captioned.
    """
    from fmrilm.evaluation.captions import semscore
    from fmrilm.evaluation.retrieval_metrics import n_way_retrieval
    from fmrilm.evaluation.task_eval import CAPTION_PROMPT
    from fmrilm.tokenizer.features import encode_betas, token_features

    tokens, latents = encode_betas(tokenizer, vertices)
    reconstruction = tokenizer.decode(torch.from_numpy(tokens))
    out = {"r2": _r2(tokenizer, reconstruction, vertices),
           "r2_clean": _r2(tokenizer, reconstruction, clean) if clean is not None else None}
    n_way = min(cfg.n_way, len(tokens))
    heads = {}
    if embedder is not None:
        heads["brain_embedder"] = embedder.embed(token_features(tokenizer, tokens))
    if tokenizer.contrast is not None:
        heads["readout"] = tokenizer.scan_embedding(torch.from_numpy(tokens)).numpy()
    for name, brain in heads.items():
        result = n_way_retrieval(brain, text, n_way, cfg.n_draws, seed=cfg.seed)
        out[f"top1_{name}"] = result["brain_to_caption"]["top1"]
    out["n_way"], out["chance_top1"] = n_way, 1.0 / n_way
    n = min(n_items, len(tokens))
    captions = captioner.generate([row[None] for row in tokens[:n]], [CAPTION_PROMPT] * n,
                                  max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                  brain_latents=[z[None] for z in latents[:n]] if captioner.reads_latents else None)
    out["semscore"] = semscore(captions, references[:n])["semscore"]
    out["example"] = captions[0]
    return out


def check_ks(ks, n_available: int, source: str = "adaptation.ks") -> list[int]:
    """Sorted distinct k values, each within 1..n_available (InputError otherwise)."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > n_available:
        raise InputError(source, "ks", f"{ks}: each k must lie in 1..{n_available} "
                         "(the held-out subject's training-split stimuli)")
    return ks


def subject_adaptation_section(data, tokenizer, captioner, heldout, reference_subject: int, embedder, cfg,
                               progress: bool = False) -> dict:
    """The adaptation table: k = 0, each adapted k, and a training subject as reference.

    Parameters
    ----------
    data : TaskData
    tokenizer : BrainTokenizer
        The run's shared tokenizer (not modified).
    captioner : Captioner
        The frozen language model and its retriever.
    heldout : HeldOut
        The corpus splits (train/test stimuli, ``corpus.json``).
    reference_subject : int
        A training subject, scored through the shared encoders on the same test stimuli.
    embedder : BrainEmbedder or None
    cfg : EvalConfig
        Uses ``cfg.adaptation`` and the retrieval/generation settings.

    Returns
    -------
    dict
        ``{"status": "skipped", "reason"}`` without a held-out subject, else ``{"subject", "ks",
        "train_pool", "test_stimuli", "conditions": {"k=0": {...}, "k=8": {...}, ...,
        "reference sub-01": {...}}}``.
    """
    from fmrilm.textembed import embed_texts

    subject, reason = heldout_subject(data, heldout.summary, tokenizer)
    if subject is None:
        return {"status": "skipped", "reason": reason}
    acfg = cfg.adaptation
    pool = stream(cfg.seed, "eval.adaptation_pool").permutation(heldout.train_stimuli)
    ks = check_ks(acfg.ks, pool.size)
    train_stim, test_stim = pool[: ks[-1]], heldout.test_stimuli
    name = data.subjects[subject]["subject"]
    train_vertices = data.mean_betas(subject, train_stim)
    train_text = embed_texts([data.stimuli[m]["captions"][0] for m in train_stim])
    text = embed_texts([data.stimuli[m]["captions"][0] for m in test_stim])
    references = [data.stimuli[m]["captions"] for m in test_stim]

    def scans(who):
        """Averaged test scans of a subject and, on synthetic data, their noise-free signal."""
        return (data.mean_betas(who, test_stim),
                np.asarray(data.clean(who)[test_stim]) if data.has_ground_truth else None)

    def score(tok, test_scans):
        return score_condition(tok, *test_scans, text, references, captioner, embedder, cfg, acfg.n_items)

    held_scans = scans(subject)
    conditions = {"k=0": score(tokenizer, held_scans)}
    for k in ks:
        adapted = adapt_subject_encoders(tokenizer, train_vertices, k, train_text, acfg.fit,
                                         source=f"{data.path} {name}", progress=progress)
        conditions[f"k={k}"] = score(adapted, held_scans)
    reference = data.subjects[reference_subject]["subject"]
    conditions[f"reference {reference}"] = score(tokenizer, scans(reference_subject))
    return {"subject": name, "ks": ks, "train_pool": int(pool.size), "test_stimuli": int(test_stim.size),
            "conditions": conditions}
