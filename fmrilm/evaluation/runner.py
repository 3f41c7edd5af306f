"""`fmrilm eval`: the whole evaluation of a run on its held-out test set → report.json + report.md.

Launch::

    fmrilm eval --config eval_demo                      # runs/demo/{corpus,tokenizer,instruct} → runs/demo/eval
    fmrilm eval --config eval_demo --set n_items=300 meteor=false --force

Sections (every figure beside its controls, all on the same items): captioning (model, shuffled
brain, text only, ridge decoder; bounds: ideal observer and bank ceiling, both on the ridge
decoder's training caption bank), VQA, retrieval (token head, continuous ablation, ridge, ideal
observer), zero-shot naming, few-shot (in-context, and adaptation to the held-out
task subject, :mod:`fmrilm.evaluation.subject_adaptation`), rest (phenotypes, next scan), tokenizer
map, ten worked examples, and the issue's targets with whether each was met. The held-out task
subject (``corpus.json`` ``task_fewshot_subjects``) appears only in the adaptation section.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fmrilm.config import check_required, required_path, save_config
from fmrilm.errors import InputError
from fmrilm.evaluation.subject_adaptation import SubjectAdaptationConfig
from fmrilm.io import atomic_dir, read_json, write_json
from fmrilm.retrieval.brain_embedder import BrainEmbedderConfig
from fmrilm.seeds import stream


@dataclass
class EvalTargets:
    """Pass/fail thresholds of the report's ``targets`` section (None: not checked, left out).

    The figures are the issue's targets; they live in the YAML (``targets:`` of ``eval_*.yaml``), not
    here. Each is met when the measured value is at least its threshold, except the perplexity ratio,
    met when at most. Names are the report's.

    Attributes
    ----------
    caption_semscore_vs_shuffled, vqa_vs_shuffled : float, optional
        Least model / shuffled-brain ratio of caption SemScore and of VQA accuracy.
    caption_semscore_minus_ridge, caption_semscore_minus_retrieved_caption : float, optional
        Least caption SemScore difference to the ridge decoder and to the retrieved caption (with a
        retriever only).
    vqa_minus_text_only : float, optional
        Least VQA accuracy difference to the text-only control.
    zero_shot_naming : float, optional
        Least fraction of novel-category items named.
    top1_minus_ridge : float, optional
        Least top-1 retrieval difference of the brain embedder (tokens) to the ridge head.
    general_text_perplexity_ratio_at_most : float, optional
        Largest adapted / base perplexity on held-out general text.
    """

    caption_semscore_vs_shuffled: float | None = None
    caption_semscore_minus_ridge: float | None = None
    caption_semscore_minus_retrieved_caption: float | None = None
    vqa_vs_shuffled: float | None = None
    vqa_minus_text_only: float | None = None
    zero_shot_naming: float | None = None
    top1_minus_ridge: float | None = None
    general_text_perplexity_ratio_at_most: float | None = None


@dataclass
class EvalConfig:
    """What to evaluate and how much (YAML: ``fmrilm/configs/eval_*.yaml``).

    Attributes
    ----------
    corpus, tokenizer, model : str
        Corpus directory (via corpus.json, the datasets), tokenizer artifact (or its stage
        directory), BrainLM export (or the stage directory holding it).
    backbone : str
        Base checkpoint of a LoRA model whose base has moved since training (fingerprint checked);
        "" uses the recorded one.
    splits : str
        The run's splits file (default: the one the corpus records): items are the scored split's
        stimuli of its train subjects. Tokenizer, corpus, model and retriever must record the same.
    split : {"test", "val"}
        The scored split: choose recipes on ``val``; score ``test`` once per run (the report says which).
    out : str
    n_items, n_novel : int
        (subject, stimulus) items captioned and questioned; novel-category items come first, up to
        `n_novel`. Retrieval uses every test item.
    n_fewshot_items : int
    shots : tuple of int
        k values of in-context few-shot captioning (0 = the zero-shot reference).
    max_train_items : int
        Training (subject, stimulus) items for the ridge and retrieval heads.
    n_temporal : int
        Next-scan targets evaluated.
    phenotype_windows : int
        Rest windows per test subject each phenotype question is asked about (the answer is the
        majority over them); 0: every window the corpus holds.
    vqa_questions_per_item : int
        Distinct questions asked about each item's scan (more give a tighter VQA estimate; the
        intervals still resample items).
    n_derangements : int
        Derangements the shuffled-brain control is scored under (captions and VQA); its scores are
        the mean over them (each derangement generates again: n_derangements times the cost).
    meteor : bool
        METEOR starts a JVM per condition (~10 s each).
    adaptation : SubjectAdaptationConfig
        k values and fitting of the held-out-subject adaptation.
    targets : EvalTargets
        Pass/fail thresholds of the report's targets (the issue's, in the YAML).

    Counts default to library values; the demo's are all stated in ``eval_demo.yaml``.
    """

    corpus: str = required_path()  # run paths: required (no demo default; eval_demo.yaml names the demo's)
    tokenizer: str = required_path()
    model: str = required_path()
    backbone: str = ""
    splits: str = ""
    split: str = "test"
    out: str = required_path()
    n_items: int = 150
    n_novel: int = 40
    n_fewshot_items: int = 32
    shots: tuple[int, ...] = (0, 1, 2)
    max_train_items: int = 3000
    n_temporal: int = 64
    phenotype_windows: int = 0
    max_new_tokens: int = 24
    vqa_max_new_tokens: int = 6
    vqa_questions_per_item: int = 1
    n_derangements: int = 3
    batch_size: int = 32
    n_way: int = 300
    n_draws: int = 30
    n_examples: int = 10
    meteor: bool = True
    seed: int = 0
    embedder: BrainEmbedderConfig = field(default_factory=lambda: BrainEmbedderConfig(epochs=30))
    adaptation: SubjectAdaptationConfig = field(default_factory=SubjectAdaptationConfig)
    targets: EvalTargets = field(default_factory=EvalTargets)


def _pick_items(test_stimuli, stimuli, subjects, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (subject, stimulus) items: novel-category ones first (up to n_novel), then familiar."""
    rng = stream(cfg.seed, "eval.items")
    pairs = np.array([(s, m) for s in subjects for m in test_stimuli], np.int64).reshape(-1, 2)
    pairs = pairs[rng.permutation(len(pairs))]
    novel = np.array([stimuli[m]["novel"] for m in pairs[:, 1]], bool)
    chosen = np.concatenate([pairs[novel][: cfg.n_novel], pairs[~novel]])[: cfg.n_items]
    return chosen[:, 0], chosen[:, 1]


def _features(data, tokenizer, subjects, stimuli_of, limit=None, latents: bool = False):
    """Averaged scans of each subject's stimuli (at most `limit` per subject) → token ids, token code
    vectors, continuous encodings, vertices and caption embeddings; with `latents` also the encoder
    outputs an LM reading continuous brain input is given (else None)."""
    from fmrilm.textembed import embed_texts
    from fmrilm.tokenizer.features import continuous_features, encode_betas, token_features

    rows = [(s, int(m)) for s in subjects for m in list(stimuli_of(s))[:limit]]
    subject = np.array([r[0] for r in rows], np.int64)
    stimulus = np.array([r[1] for r in rows], np.int64)
    vertices = np.concatenate([data.mean_betas(s, stimulus[subject == s]) for s in subjects if (subject == s).any()])
    tokens, encoded = encode_betas(tokenizer, vertices)
    caption = [data.stimuli[m]["captions"][0] for m in stimulus]
    return {"subject": subject, "stimulus": stimulus, "vertices": vertices, "tokens_ids": tokens,
            "latents": encoded if latents else None,
            "tokens": token_features(tokenizer, tokens), "continuous": continuous_features(tokenizer, vertices),
            "caption": caption, "text": embed_texts(caption)}


def _brain_map(tokenizer_dir: Path, data, atlas, out_dir: Path) -> dict:
    """Per-parcel tokenizer R² (its eval.json) or, failing that, the noise ceiling, as a surface PNG."""
    from fmrilm.tokenizer.plotting import plot_parcel_map

    if (tokenizer_dir / "eval.json").is_file():
        values, title = np.asarray(read_json(tokenizer_dir / "eval.json")["r2_per_parcel"]), "tokenizer R² per parcel"
    else:
        values, title = atlas.parcellate(data.noise_ceiling(0)[None])[0], "noise ceiling (%) per parcel"
    # Headless-safe under any backend: the plot never touches pyplot (fmrilm.tokenizer.plotting).
    plot_parcel_map(values, atlas, title=title, output_file=out_dir / "brain_map.png")
    return {"what": title, "mean": float(np.nanmean(values))}


def _targets(report: dict, semscore: dict, vqa_hits: dict, caption_stimulus, vqa_stimulus,
             thresholds: EvalTargets) -> dict:
    """Each configured target (`thresholds`, the issue's); the item-paired ones carry a 95 % bootstrap interval.

    `semscore` and `vqa_hits` map a condition to its per-item SemScores / exact-match hit counts (None:
    VQA was skipped);
    `caption_stimulus` and `vqa_stimulus` give each of those items' stimulus. The interval resamples
    stimuli with all their items (the subjects' items of one stimulus are correlated). A target whose
    threshold is None is left out."""
    from fmrilm.evaluation.uncertainty import paired_difference_ci, paired_ratio_ci

    cap, vqa, ret = report["captioning"], report["vqa"], report["retrieval"]

    def target(measured, threshold, ci=None):
        out = {"measured": measured, "threshold": threshold, "met": bool(measured >= threshold)}
        # an unbounded ratio (a resample whose control scored 0) is written as null, not Infinity
        return {**out, "ci95": [float(v) if np.isfinite(v) else None for v in ci]} if ci is not None else out

    def ratio_ci(scores: dict, stimulus):
        if np.mean(scores["shuffled"]) <= 0:
            return None
        return paired_ratio_ci(scores["model"], scores["shuffled"], clusters=stimulus)

    t = thresholds
    ratio = cap["model"]["semscore"] / max(cap["shuffled"]["semscore"], 1e-9)
    kept = report["forgetting"]
    out = {}
    limit = t.general_text_perplexity_ratio_at_most
    if "skipped" not in kept and limit is not None:
        out["general_text_perplexity_ratio_at_most"] = {
            "measured": kept["perplexity_ratio"], "threshold": limit, "met": bool(kept["perplexity_ratio"] <= limit),
            "note": "adapted / base perplexity on held-out general text: lower is better, met when <= threshold"}
    zero = report["zero_shot"]
    if "model" in zero and t.zero_shot_naming is not None:
        out["zero_shot_naming"] = target(zero["model"]["fraction"], t.zero_shot_naming)
    if t.vqa_minus_text_only is not None and vqa_hits is not None:  # None: VQA skipped
        out["vqa_minus_text_only"] = target(vqa["model"]["overall"] - vqa["text_only"]["overall"],
                                            t.vqa_minus_text_only)
    # the LM adds to what it reads, or says plainly it does not
    if "retrieved_caption" in semscore and t.caption_semscore_minus_retrieved_caption is not None:
        out["caption_semscore_minus_retrieved_caption"] = target(
            cap["model"]["semscore"] - cap["retrieved_caption"]["semscore"], t.caption_semscore_minus_retrieved_caption,
            paired_difference_ci(semscore["model"], semscore["retrieved_caption"], clusters=caption_stimulus))
    if t.caption_semscore_vs_shuffled is not None:
        out["caption_semscore_vs_shuffled"] = target(ratio, t.caption_semscore_vs_shuffled,
                                                     ratio_ci(semscore, caption_stimulus))
    if t.caption_semscore_minus_ridge is not None:
        out["caption_semscore_minus_ridge"] = target(
            cap["model"]["semscore"] - cap["ridge_decoder"]["semscore"], t.caption_semscore_minus_ridge,
            paired_difference_ci(semscore["model"], semscore["ridge_decoder"], clusters=caption_stimulus))
    if t.vqa_vs_shuffled is not None and vqa_hits is not None:
        out["vqa_vs_shuffled"] = target(vqa["model"]["overall"] / max(vqa["shuffled"]["overall"], 1e-9),
                                        t.vqa_vs_shuffled, ratio_ci(vqa_hits, vqa_stimulus))
    if t.top1_minus_ridge is not None:
        out["top1_minus_ridge"] = target(ret["brain_embedder_tokens"]["brain_to_caption"]["top1"]
                                         - ret["ridge"]["brain_to_caption"]["top1"], t.top1_minus_ridge,
                                         ret["brain_embedder_tokens"]["top1_minus_ridge_ci95"])
    return out


def run_evaluation(cfg: EvalConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Evaluate a run and write ``report.json``, ``report.md`` and ``brain_map.png`` into ``cfg.out``.

    Every input is opened and checked before anything is written; the output directory appears
    only when complete. Returns the report dict (``report.json``).
    """
    from fmrilm.artifacts import check_compatible, resolve_model_dir, resolve_tokenizer_dir
    from fmrilm.brain.task_data import TaskData
    from fmrilm.corpus.heldout import load_heldout
    from fmrilm.evaluation import fewshot, rest_eval, task_eval
    from fmrilm.evaluation.captions import MeteorScorer
    from fmrilm.evaluation.forgetting import forgetting_section
    from fmrilm.evaluation.ideal_observer import ideal_observer
    from fmrilm.evaluation.report import write_markdown
    from fmrilm.evaluation.retrieval_eval import bank_ceiling, retrieval_section
    from fmrilm.evaluation.subject_adaptation import subject_adaptation_section
    from fmrilm.retrieval.captioner import Captioner
    from fmrilm.tokenizer.data import dataset_atlas
    from fmrilm.tokenizer.model import BrainTokenizer

    check_required(cfg, "eval config")
    if Path(cfg.out).exists() and not overwrite:
        raise InputError(cfg.out, "out", "already exists (pass --force to replace it)")
    timings, t0 = {}, time.time()
    heldout = load_heldout(cfg.corpus, cfg.splits or None, cfg.split)
    tokenizer_dir, model_dir = resolve_tokenizer_dir(cfg.tokenizer), resolve_model_dir(cfg.model)
    check_compatible(tokenizer_dir, model_dir, cfg.corpus, splits=heldout.splits)
    task_path = heldout.input_path("task_dataset")
    if task_path is None:
        raise InputError(Path(cfg.corpus) / "corpus.json", "inputs.task_dataset", "the corpus has no task data")
    data = TaskData(task_path)
    # Sections a dataset cannot support (real data: no simulator truth, no QA, …) are skipped, each with why.
    skipped = {}
    if data.has_ground_truth:
        data.noise_covariance(0)  # the observer's full covariance: a dataset without it is refused before compute
    else:
        skipped["ideal_observer"] = (f"{task_path} holds no simulator ground truth (clean responses, noise "
                                     "covariance): there is no ideal observer of real data")
    tokenizer = BrainTokenizer.from_pretrained(tokenizer_dir, data.atlas_info)
    captioner = Captioner.load(model_dir, cfg.backbone or None)
    atlas = dataset_atlas(data.atlas_info, task_path)
    # Held-out task subjects are for the adaptation section only: no head is trained or scored on them.
    subjects = [int(i) for i in heldout.splits.task_subject_indices(data.dataset, "train")]
    test_stim = heldout.test_stimuli
    timings["load"] = time.time() - t0

    t0 = time.time()
    continuous = captioner.reads_latents
    test = _features(data, tokenizer, subjects, lambda s: test_stim, latents=continuous)
    train = _features(data, tokenizer, subjects, lambda s: heldout.train_stimuli,
                      max(1, cfg.max_train_items // len(subjects)), latents=continuous)
    train_captions = [data.stimuli[m]["captions"][0] for m in train["stimulus"]]
    timings["features"] = time.time() - t0

    t0 = time.time()
    retrieval, ridge_captions, embeddings, heads = retrieval_section(train, test, train_captions, train["text"],
                                                                     cfg, progress)
    n_repeats = int(data.trial_repeat.max()) + 1
    scans = {s: test["vertices"][test["subject"] == s] for s in subjects}
    # The observer picks captions from the ridge decoder's bank: the training stimuli the heads train on.
    observer = None if "ideal_observer" in skipped else ideal_observer(
        data, subjects, test_stim, np.unique(train["stimulus"]), scans, n_repeats, cfg.n_way, cfg.n_draws, cfg.seed)
    if observer is not None:
        retrieval["ideal_observer"] = observer["retrieval"]
    timings["retrieval"] = time.time() - t0

    t0 = time.time()
    item_subject, item_stimulus = _pick_items(test_stim, data.stimuli, subjects, cfg)
    row_of = {(int(s), int(m)): i for i, (s, m) in enumerate(zip(test["subject"], test["stimulus"]))}
    rows = np.array([row_of[(int(s), int(m))] for s, m in zip(item_subject, item_stimulus)], np.int64)
    items = task_eval.TaskItems(item_subject, item_stimulus, test["tokens_ids"][rows], data.stimuli,
                                test["latents"][rows] if continuous else None)
    captions, derangements = task_eval.caption_conditions(captioner, items, cfg, progress)
    captions["ridge_decoder"] = [ridge_captions[i] for i in rows]
    references = items.references()
    with MeteorScorer() if cfg.meteor else contextlib.nullcontext(False) as meteor:  # one JVM for all conditions
        captioning = task_eval.score_conditions(captions, derangements, references, meteor)
        if observer is not None:
            position = {int(m): j for j, m in enumerate(test_stim)}
            observed = [observer["choice"][int(s)][position[int(m)]] for s, m in zip(item_subject, item_stimulus)]
            captioning["ideal_observer"] = task_eval.score_captions(
                [data.stimuli[m]["captions"][0] for m in observed], references, meteor)
    # every train-split stimulus's caption: the bank of the LM's own retriever too, so no decoder exceeds it
    ceiling = bank_ceiling(references, [data.stimuli[m]["captions"][0] for m in heldout.train_stimuli])
    captioning["bank_ceiling"] = {"semscore": ceiling["semscore"], "n": ceiling["n"],
                                  "per_item_semscore": ceiling["per_item"]}
    captioning["conditions"] = [*captions, *(["ideal_observer"] if observer is not None else []), "bank_ceiling"]
    zero_shot = task_eval.zero_shot_section(captions, derangements, items, data.novel_categories,
                                            data.category_synonyms)
    timings["captioning"] = time.time() - t0

    t0 = time.time()
    if any(data.stimuli[m]["qa"] for m in item_stimulus):
        vqa, vqa_details = task_eval.vqa_section(captioner, items, cfg, progress)
    else:
        vqa, vqa_details = {"status": "skipped", "reason": f"no question-answer pairs for the evaluated items in "
                            f"{task_path} (an NSD-style import carries captions only)"}, None
    timings["vqa"] = time.time() - t0

    t0 = time.time()
    few = items_subset(items, cfg.n_fewshot_items)
    shot_tokens = {s: train["tokens_ids"][train["subject"] == s] for s in subjects}
    shot_captions = {s: [data.stimuli[m]["captions"][0] for m in train["stimulus"][train["subject"] == s]]
                     for s in subjects}
    shot_latents = {s: train["latents"][train["subject"] == s] for s in subjects} if continuous else None
    few_shot = {"in_context": fewshot.in_context(captioner, few, shot_tokens, shot_captions, cfg.shots, cfg, progress,
                                                 shot_latents)}
    timings["few_shot"] = time.time() - t0

    t0 = time.time()
    few_shot["subject_adaptation"] = subject_adaptation_section(data, tokenizer, captioner, heldout, subjects[0],
                                                                heads["brain_embedder_tokens"], cfg, progress)
    timings["subject_adaptation"] = time.time() - t0

    t0 = time.time()
    # rest scans and text-only questions are asked without retrieval: the model alone
    rest = rest_eval.rest_section(captioner.model, tokenizer, heldout, cfg)
    timings["rest"] = time.time() - t0

    t0 = time.time()
    forgetting = forgetting_section(captioner.model)
    timings["forgetting"] = time.time() - t0
    sections = {"vqa": vqa, "zero_shot": zero_shot, "rest": rest,
                "subject_adaptation": few_shot["subject_adaptation"]}
    skipped.update({name: section["reason"] for name, section in sections.items()
                    if isinstance(section, dict) and section.get("status") == "skipped"})

    report = {"protocol": {"scored_split": heldout.split, "splits": heldout.splits.record(),
                           "note": "Recipes are chosen on val (`--set split=val`); test is scored once per run."
                           if heldout.split == "test" else "A val-split report: for choosing recipes, not for "
                           "reporting."},
              "items": {"test_stimuli": int(test_stim.size), "subjects": len(subjects), "captioned": len(items),
                        "train_items": int(train["stimulus"].size), "repeats_averaged": n_repeats,
                        "brain_input": "continuous: the tokenizer encoder's outputs for task scans (rest scans: "
                                       "codes)" if continuous else "codes",
                        "retrieval_bank": None if captioner.retriever is None else {
                            "captions": len(captioner.retriever.captions),
                            "text_only": captioner.retriever.n_text_only}},
              "captioning": {k: ({kk: vv for kk, vv in v.items() if kk != "per_item_semscore"}
                                 if isinstance(v, dict) else v) for k, v in captioning.items()},
              "vqa": vqa, "retrieval": retrieval, "zero_shot": zero_shot, "few_shot": few_shot, "rest": rest,
              "forgetting": forgetting, "skipped": skipped}
    vqa_hits = vqa_stimulus = None
    if vqa_details is not None:
        # Hits summed per item: the interval resamples items, and the ratio of the sums is the accuracy ratio.
        vqa_hits = {c: np.bincount(vqa_details["item"], vqa_details["hits"][c]) for c in ("model", "shuffled")}
        # an item's questions are consecutive: its first question gives its stimulus
        vqa_stimulus = np.asarray(vqa_details["stimulus"])[np.unique(vqa_details["item"], return_index=True)[1]]
    report["targets"] = _targets(report, {c: captioning[c]["per_item_semscore"] for c in captioning
                                          if isinstance(captioning[c], dict)}, vqa_hits, item_stimulus, vqa_stimulus,
                                 cfg.targets)
    report["examples"] = _examples(captioner, items, captions, vqa_details, embeddings, test, row_of, cfg)
    report["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    report["brain_map"] = "brain_map.png"
    with atomic_dir(cfg.out, overwrite) as tmp:
        report["tokenizer_map"] = _brain_map(tokenizer_dir, data, atlas, tmp)
        write_json(tmp / "report.json", report)
        write_markdown(report, tmp / "report.md")
        write_json(tmp / "items.json", {"captions": captions, "vqa": vqa_details,
                                        "subject": item_subject, "stimulus": item_stimulus})
        save_config(cfg, tmp / "eval_config.yaml")
    return report


def items_subset(items, n: int):
    """The first `n` items (already in seeded random order)."""
    return items.take(np.arange(min(n, len(items))))


def _examples(captioner, items, captions, vqa_details, embeddings, test, row_of, cfg) -> list[dict]:
    """Worked examples: reference, generated and shuffled captions, one QA, the training captions the
    model's prompt retrieved for the scan (what the LM read), and the scan's nearest test captions in
    the retrieval benchmark (its candidates are the test stimuli)."""
    from fmrilm.textembed import embed_texts

    unique = sorted(set(test["stimulus"].tolist()))
    bank = embed_texts([items.stimuli[m]["captions"][0] for m in unique])
    qa_row = {}
    asked = (vqa_details or {}).get  # no VQA (skipped): no question in the examples
    for i, key in enumerate(zip(asked("subject", []), asked("stimulus", []))):
        qa_row.setdefault(key, i)  # an item's first question
    n = min(cfg.n_examples, len(items))
    prompted = (captioner.retriever.neighbours(items.tokens[:n]) if captioner.retriever is not None
                else [None] * n)
    out = []
    for i in range(n):
        s, m = int(items.subject[i]), int(items.stimulus[i])
        query = embeddings["brain_embedder_tokens"][row_of[(s, m)]]
        top = np.argsort(-(bank @ query))[:3]
        q = qa_row.get((s, m))
        out.append({"subject": s, "stimulus": m, "reference": items.stimuli[m]["captions"][0],
                    "generated": captions["model"][i], "shuffled": captions["shuffled"][i],
                    "question": vqa_details["question"][q] if q is not None else None,
                    "answer": vqa_details["model"][q] if q is not None else None,
                    "truth": vqa_details["answer"][q] if q is not None else None,
                    "prompt_captions": prompted[i],
                    "nearest_test_captions": [items.stimuli[unique[j]]["captions"][0] for j in top]})
    return out
