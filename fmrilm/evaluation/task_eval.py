"""Task-scan evaluation of a captioner: captions, VQA and zero-shot naming, each beside its controls.

The captioner (:class:`~fmrilm.retrieval.captioner.Captioner`) is the run's BrainLM with its retriever.

Every score is computed on the same items under three conditions:

- ``model``: the item's own brain tokens (repeats averaged, then tokenized);
- ``shuffled``: another test item's tokens (a derangement that never gives an item a trial of its
  own stimulus, :func:`fmrilm.evaluation.controls.derangement`), scored under ``cfg.n_derangements``
  derangements and averaged per item (an item's shuffled SemScore or VQA hits are its mean over
  derangements, so the paired intervals still pair items); the per-derangement scores are kept
  beside the mean (``per_derangement``), and the shuffled captions shown are the first derangement's;
- ``text_only``: the same instruction with no scan at all (what the LM says from priors alone).

A captioner with a retriever (a model trained with retrieval-augmented prompts,
:mod:`fmrilm.retrieval.caption_prompts`) also gets
the captioning ablation ``no_retrieval``: its own scans with plain prompts, i.e. what the brain tokens
and scan conditioning give without the retrieved captions; and ``retrieved_caption``: the retriever's
nearest training caption verbatim, i.e. what the prompt offers the LM to copy (a retrieval-only
decoder on the same brain tokens, beside the ridge decoder on vertices).

Prompts are the first paraphrase of each task in :data:`fmrilm.corpus.phrasing.PROMPTS`, i.e. the
wording the model was instruction-tuned on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmrilm.corpus import without_scan
from fmrilm.corpus.phrasing import PROMPTS
from fmrilm.evaluation.captions import MeteorScorer, caption_metrics, semscore
from fmrilm.evaluation.controls import derangements
from fmrilm.evaluation.naming import zero_shot_naming
from fmrilm.evaluation.vqa import vqa_accuracy
from fmrilm.seeds import stream

CONDITIONS = ("model", "shuffled", "text_only")
CAPTION_PROMPT = PROMPTS["caption"][0]
VQA_PROMPT = PROMPTS["vqa"][0]


@dataclass
class TaskItems:
    """Evaluation items: one (subject, stimulus) pair each, with its averaged scan's tokens.

    Attributes
    ----------
    subject, stimulus : ndarray of int [N]
    tokens : ndarray of int [N, P·L]
    stimuli : list of dict
        The task dataset's stimulus table (all rows; index with ``stimulus``).
    latents : ndarray [N, P, d_code] or None
        The tokenizer encoder's outputs of the same scans, for a model reading continuous brain input
        (:mod:`fmrilm.llm.brain_input`); every condition then reads them in place of the codes.
    """

    subject: np.ndarray
    stimulus: np.ndarray
    tokens: np.ndarray
    stimuli: list
    latents: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.stimulus.size)

    def references(self) -> list[list[str]]:
        return [self.stimuli[m]["captions"] for m in self.stimulus]

    def take(self, index) -> TaskItems:
        """The items at `index` (positions or a boolean mask)."""
        return TaskItems(self.subject[index], self.stimulus[index], self.tokens[index], self.stimuli,
                         None if self.latents is None else self.latents[index])

    def shuffled_index(self, seed: int, count: int = 1) -> np.ndarray:
        """``[count, N]``: under each of `count` derangements, each item's stand-in, an item with another
        stimulus (whose scan it is given)."""
        return derangements(len(self), count, seed, groups=self.stimulus)

    def scans(self, index=None) -> tuple[list, list | None]:
        """`generate`'s per-prompt scan arguments for items `index` (default: all, in order): tokens
        ``[1, P·L]`` each, and encoder outputs ``[1, P, d]`` each when the items carry them."""
        index = np.arange(len(self)) if index is None else np.asarray(index).reshape(-1)
        latents = None if self.latents is None else [self.latents[i][None] for i in index]
        return [self.tokens[i][None] for i in index], latents


NO_SCANS = (None, None)


def _generate(captioner, scans, prompts, max_new_tokens, batch_size, progress, retrieve=True):
    tokens, latents = scans
    return captioner.generate([None] * len(prompts) if tokens is None else tokens, prompts, retrieve,
                              max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                              brain_latents=latents)


def _shuffled_generate(captioner, items: TaskItems, index: np.ndarray, prompts: list[str], max_new_tokens, cfg,
                       progress):
    """Answers under every derangement, the items' scans at ``index [D, N]``: one batched generation of
    all D·N prompts (batches stay full), split back into D lists."""
    n_derangements, n = index.shape
    texts = _generate(captioner, items.scans(index), prompts * n_derangements, max_new_tokens, cfg.batch_size,
                      progress)
    return [texts[d * n:(d + 1) * n] for d in range(n_derangements)]


def caption_conditions(captioner, items: TaskItems, cfg, progress: bool = False) -> tuple[dict, list[list[str]]]:
    """Generated captions of every item under each condition (greedy).

    Returns
    -------
    captions : dict of str to list of str
        Per condition; ``shuffled`` holds the first derangement's.
    derangements : list of list of str
        The shuffled captions under each of ``cfg.n_derangements`` derangements.
    """
    n = len(items)
    prompts = [CAPTION_PROMPT] * n
    shuffled = _shuffled_generate(captioner, items, items.shuffled_index(cfg.seed, cfg.n_derangements), prompts,
                                  cfg.max_new_tokens, cfg, progress)
    out = {"model": _generate(captioner, items.scans(), prompts, cfg.max_new_tokens, cfg.batch_size, progress),
           "shuffled": shuffled[0]}
    # Greedy decoding of one scan-free prompt gives one caption: generate it once, use it for all.
    (text_only,) = _generate(captioner, NO_SCANS, [without_scan(CAPTION_PROMPT)], cfg.max_new_tokens, 1, False)
    out["text_only"] = [text_only] * n
    if captioner.retriever is not None:
        out["no_retrieval"] = _generate(captioner, items.scans(), prompts, cfg.max_new_tokens, cfg.batch_size,
                                        progress, retrieve=False)
        out["retrieved_caption"] = [found[0] for found in captioner.retriever.neighbours(items.tokens)]
    return out, shuffled


def score_captions(generated: list[str], references: list[list[str]], meteor: bool | MeteorScorer) -> dict:
    """SemScore plus the BrainHub metrics of one condition."""
    sem = semscore(generated, references)
    coco = caption_metrics(generated, references, meteor=meteor)
    return {"semscore": sem["semscore"], **{k: v for k, v in coco.items() if k != "n"}, "n": sem["n"],
            "per_item_semscore": sem["per_item"]}


def _mean(values: list):
    """Element-wise mean of the same score structure computed under each derangement: floats and
    lists of numbers (per-item scores, hits) are averaged; counts, names and None are the first's."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _mean([v[k] for v in values]) for k in first}
    if isinstance(first, float) or (isinstance(first, list) and first and isinstance(first[0], (bool, int, float))):
        return np.mean(values, axis=0).tolist()
    return first


def _over_derangements(each: list[dict], headline: str) -> dict:
    """:func:`_mean` of the scores under each derangement, with each one's `headline` score beside it."""
    return {**_mean(each), "per_derangement": [e[headline] for e in each], "n_derangements": len(each)}


def score_conditions(captions: dict[str, list[str]], shuffled: list[list[str]], references: list[list[str]],
                     meteor: bool | MeteorScorer) -> dict:
    """:func:`score_captions` of each condition, ``shuffled`` averaged over its derangements.

    The shuffled condition's metrics and per-item SemScores are means over the derangements' captions
    `shuffled`, with ``per_derangement`` (each derangement's SemScore) and ``n_derangements`` beside them.
    """
    return {name: _over_derangements([score_captions(d, references, meteor) for d in shuffled], "semscore")
            if name == "shuffled" else score_captions(texts, references, meteor) for name, texts in captions.items()}


def zero_shot_section(captions: dict[str, list[str]], shuffled: list[list[str]], items: TaskItems,
                      novel_categories, synonyms) -> dict:
    """Naming rate of novel categories in each condition's captions of the novel-category items (the
    shuffled condition's averaged over the derangements' captions `shuffled`)."""
    novel = set(novel_categories)
    rows = [i for i, m in enumerate(items.stimulus) if novel & set(items.stimuli[m]["categories"])]
    if not rows:
        return {"status": "skipped", "reason": "no novel-category stimulus among the evaluated items"}
    cats = [sorted(novel & set(items.stimuli[items.stimulus[i]]["categories"])) for i in rows]

    def naming(texts: list[str]) -> dict:
        return zero_shot_naming([texts[i] for i in rows], cats, synonyms)

    # with a retriever also without it, and its own top retrieved caption (what the LM is shown)
    extra = tuple(c for c in ("no_retrieval", "retrieved_caption") if c in captions)
    return {c: _over_derangements([naming(d) for d in shuffled], "fraction") if c == "shuffled" else naming(captions[c])
            for c in CONDITIONS + extra}


def vqa_questions(items: TaskItems, seed: int, per_item: int = 1) -> dict[str, list]:
    """Seeded questions, up to `per_item` distinct ones per item.

    Returns ``{"item": index into items, "question", "answer", "type"}``, one entry per question,
    items in order and each item's questions together.
    """
    rng = stream(seed, "eval.vqa_questions")
    out = {"item": [], "question": [], "answer": [], "type": []}
    for i, m in enumerate(items.stimulus):
        qa = items.stimuli[m]["qa"]
        for j in rng.choice(len(qa), size=min(per_item, len(qa)), replace=False):
            out["item"].append(i)
            out["question"].append(qa[int(j)]["question"])
            out["answer"].append(str(qa[int(j)]["answer"]))
            out["type"].append(qa[int(j)].get("type", "all"))
    return out


def vqa_section(captioner, items: TaskItems, cfg, progress: bool = False) -> tuple[dict, dict]:
    """VQA exact-match accuracy by question type for each condition, and the answers given.

    Each item is asked ``cfg.vqa_questions_per_item`` questions about the same scan (the shuffled
    condition: about the same other item's scan, under each of ``cfg.n_derangements`` derangements),
    so an item's questions share its brain tokens; ``details["item"]`` says which item a question
    belongs to (resampling unit of the intervals), ``details["hits"][condition]`` whether each answer
    matched: for ``shuffled`` the fraction of derangements in which it did, and the section's
    shuffled accuracies are means over derangements (``per_derangement``: each one's overall
    accuracy). ``details["shuffled"]`` holds the first derangement's answers."""
    keep = np.array([bool(items.stimuli[m]["qa"]) for m in items.stimulus])
    sub = items.take(keep)
    asked = vqa_questions(sub, cfg.seed, cfg.vqa_questions_per_item)
    row = np.asarray(asked["item"], np.int64)
    prompts = [VQA_PROMPT.format(question=q) for q in asked["question"]]
    shuffled = _shuffled_generate(captioner, sub, sub.shuffled_index(cfg.seed, cfg.n_derangements)[:, row],
                                  prompts, cfg.vqa_max_new_tokens, cfg, progress)
    given = {
        "model": _generate(captioner, sub.scans(row), prompts, cfg.vqa_max_new_tokens, cfg.batch_size, progress),
        "shuffled": shuffled[0],
        "text_only": _generate(captioner, NO_SCANS, [without_scan(p) for p in prompts],
                               cfg.vqa_max_new_tokens, cfg.batch_size, progress),
    }
    scores = {c: _over_derangements([vqa_accuracy(d, asked["answer"], asked["type"]) for d in shuffled], "overall")
              if c == "shuffled" else vqa_accuracy(given[c], asked["answer"], asked["type"]) for c in CONDITIONS}
    section = {c: {k: v for k, v in scores[c].items() if k != "hits"} for c in CONDITIONS}
    details = {**asked, "stimulus": sub.stimulus[row].tolist(), "subject": sub.subject[row].tolist(), **given,
               "hits": {c: score["hits"] for c, score in scores.items()}}
    return section, details

