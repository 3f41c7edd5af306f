"""Task-scan evaluation of a BrainLM: captions, VQA and zero-shot naming, each beside its controls.

Every score is computed on the same items under three conditions:

- ``model``: the item's own brain tokens (repeats averaged, then tokenized);
- ``shuffled``: another test item's tokens (a derangement that never gives an item a trial of its
  own stimulus, :func:`fmrilm.evaluation.controls.derangement`);
- ``text_only``: the same instruction with no scan at all (what the LM says from priors alone).

A model trained with retrieval-augmented prompts (:mod:`fmrilm.retrieval.caption_prompts`) also gets
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
from fmrilm.evaluation.controls import derangement
from fmrilm.evaluation.naming import zero_shot_naming
from fmrilm.evaluation.vqa import vqa_accuracy
from fmrilm.llm.generate import generate

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
    """

    subject: np.ndarray
    stimulus: np.ndarray
    tokens: np.ndarray
    stimuli: list

    def __len__(self) -> int:
        return int(self.stimulus.size)

    def references(self) -> list[list[str]]:
        return [self.stimuli[m]["captions"] for m in self.stimulus]

    def shuffled_tokens(self, seed: int) -> np.ndarray:
        """Each item gets the tokens of an item with another stimulus."""
        return self.tokens[derangement(len(self), seed, groups=self.stimulus)]


def _scan_lists(tokens: np.ndarray) -> list[np.ndarray]:
    return [row[None] for row in tokens]


def _generate(model, tokens, prompts, max_new_tokens, batch_size, progress, retrieve=True):
    return generate(model, tokens, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                    progress=progress, retrieve=retrieve)


def caption_conditions(model, items: TaskItems, cfg, progress: bool = False) -> dict[str, list[str]]:
    """Generated captions of every item under each condition (greedy)."""
    n = len(items)
    prompts = [CAPTION_PROMPT] * n
    out = {"model": _generate(model, _scan_lists(items.tokens), prompts, cfg.max_new_tokens, cfg.batch_size,
                              progress),
           "shuffled": _generate(model, _scan_lists(items.shuffled_tokens(cfg.seed)), prompts,
                                 cfg.max_new_tokens, cfg.batch_size, progress)}
    # Greedy decoding of one scan-free prompt gives one caption: generate it once, use it for all.
    (text_only,) = _generate(model, [None], [without_scan(CAPTION_PROMPT)], cfg.max_new_tokens, 1, False)
    out["text_only"] = [text_only] * n
    if model.prompt_retriever is not None:
        out["no_retrieval"] = _generate(model, _scan_lists(items.tokens), prompts, cfg.max_new_tokens,
                                        cfg.batch_size, progress, retrieve=False)
        out["retrieved_caption"] = [found[0] for found in model.prompt_retriever.neighbours(items.tokens)]
    return out


def score_captions(generated: list[str], references: list[list[str]], meteor: bool | MeteorScorer) -> dict:
    """SemScore plus the BrainHub metrics of one condition."""
    sem = semscore(generated, references)
    coco = caption_metrics(generated, references, meteor=meteor)
    return {"semscore": sem["semscore"], **{k: v for k, v in coco.items() if k != "n"}, "n": sem["n"],
            "per_item_semscore": sem["per_item"]}


def zero_shot_section(captions: dict[str, list[str]], items: TaskItems, novel_categories, synonyms) -> dict:
    """Naming rate of novel categories in each condition's captions of the novel-category items."""
    novel = set(novel_categories)
    rows = [i for i, m in enumerate(items.stimulus) if novel & set(items.stimuli[m]["categories"])]
    if not rows:
        return {"status": "skipped", "reason": "no novel-category stimulus among the evaluated items"}
    cats = [sorted(novel & set(items.stimuli[items.stimulus[i]]["categories"])) for i in rows]
    return {c: zero_shot_naming([captions[c][i] for i in rows], cats, synonyms) for c in CONDITIONS}


def vqa_questions(items: TaskItems, seed: int, per_item: int = 1) -> dict[str, list]:
    """Seeded questions, up to `per_item` distinct ones per item.

    Returns ``{"item": index into items, "question", "answer", "type"}``, one entry per question,
    items in order and each item's questions together.
    """
    rng = np.random.default_rng([seed, 11])
    out = {"item": [], "question": [], "answer": [], "type": []}
    for i, m in enumerate(items.stimulus):
        qa = items.stimuli[m]["qa"]
        for j in rng.choice(len(qa), size=min(per_item, len(qa)), replace=False):
            out["item"].append(i)
            out["question"].append(qa[int(j)]["question"])
            out["answer"].append(str(qa[int(j)]["answer"]))
            out["type"].append(qa[int(j)].get("type", "all"))
    return out


def vqa_section(model, items: TaskItems, cfg, progress: bool = False) -> tuple[dict, dict]:
    """VQA exact-match accuracy by question type for each condition, and the answers given.

    Each item is asked ``cfg.vqa_questions_per_item`` questions about the same scan (the shuffled
    condition: about the same other item's scan), so an item's questions share its brain tokens;
    ``details["item"]`` says which item a question belongs to (resampling unit of the intervals),
    ``details["hits"][condition]`` whether each answer matched."""
    keep = np.array([bool(items.stimuli[m]["qa"]) for m in items.stimulus])
    sub = TaskItems(items.subject[keep], items.stimulus[keep], items.tokens[keep], items.stimuli)
    asked = vqa_questions(sub, cfg.seed, cfg.vqa_questions_per_item)
    row = np.asarray(asked["item"], np.int64)
    prompts = [VQA_PROMPT.format(question=q) for q in asked["question"]]
    given = {
        "model": _generate(model, _scan_lists(sub.tokens[row]), prompts, cfg.vqa_max_new_tokens, cfg.batch_size,
                           progress),
        "shuffled": _generate(model, _scan_lists(sub.shuffled_tokens(cfg.seed)[row]), prompts,
                              cfg.vqa_max_new_tokens, cfg.batch_size, progress),
        "text_only": _generate(model, [None] * len(prompts), [without_scan(p) for p in prompts],
                               cfg.vqa_max_new_tokens, cfg.batch_size, progress),
    }
    scores = {c: vqa_accuracy(given[c], asked["answer"], asked["type"]) for c in CONDITIONS}
    section = {c: {k: v for k, v in score.items() if k != "hits"} for c, score in scores.items()}
    details = {**asked, "stimulus": sub.stimulus[row].tolist(), "subject": sub.subject[row].tolist(), **given,
               "hits": {c: score["hits"] for c, score in scores.items()}}
    return section, details
