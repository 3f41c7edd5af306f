"""In-silico microstimulation: add graded activity to localized vertices and read the result two ways.

    fmrilm stimulate --config stimulation_demo

Protocol (after CorText):

1. Patches (:mod:`fmrilm.stimulation.patches`): the target is the `n_vertices` cortical vertices
   with the largest localizer contrast "target category vs the other categories"
   (:func:`fmrilm.brain.localizer.localizer_contrast`), smoothed on the mesh; the localizer runs
   are independent of the task trials, so selection and test never share noise. Controls:
   `n_control_patches` random patches of the target's size and shape (one geodesic disc per
   target component, same sizes and hemispheres) at least `control_min_distance_mm` from it, and
   the patch of another category.
2. Scans: `n_scans` held-out test scans of the subject (corpus test split, repeats averaged) of
   stimuli whose reference captions do not name the target concept (so the rate starts near 0 and
   its rise is what stimulation adds; ``concept_free_stimuli: false`` takes any). The target and
   the other category perturb all of them; each control patch a random `n_control_scans` of them
   (the cost: see below). The perturbation is ``α · SD`` at the patch's vertices, where SD is each
   vertex's SD across the `n_scans` scans (α in units of the betas' SD), and 0 elsewhere.
3. Readers of every perturbed scan:

   - the LM: re-tokenize with the run's tokenizer, caption greedily, and score whether the caption
     names the target concept (whole-word match of the concept words), and its SemScore to a
     concept probe sentence;
   - the ideal observer (:func:`fmrilm.evaluation.ideal_observer.log_likelihoods`): the most likely
     *training* stimulus under the simulator's clean responses and full noise covariance
     (:meth:`fmrilm.brain.task_data.TaskData.noise_covariance`), scored 1 if any of its reference
     captions names the concept (the complement of the concept-free rule). It tells "the
     simulated patch carries the category" apart from "the LM reads it".

4. Statistics (:mod:`fmrilm.stimulation.statistics`): per α the rate with a bootstrap interval;
   rises (largest α minus α = 0), specificity = target rise / mean control-patch rise (undefined
   when the control rise's interval reaches 0), the rise differences target − controls and
   target − other category with intervals, and the Spearman correlation of the target curve with α.

Cost: the unperturbed scans are captioned once (α = 0 is the same for every condition), then one
``generate()`` call per non-zero α captions ``2·n_scans + n_control_patches·n_control_scans``
prompts (demo: 30 + 10·8 + 30 = 140, 590 captions in all). The ideal observer decodes every
perturbed scan of every α in one call (its cost is mostly the candidates' side).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fmrilm.config import check_required, required_path
from fmrilm.errors import InputError
from fmrilm.seeds import stream

CONCEPT_WORDS = {
    "faces": ["person", "people", "man", "men", "woman", "women", "child", "children", "kid", "kids", "boy",
              "girl", "guy", "lady", "face", "faces", "player", "players", "skier", "skiers", "skateboarder"],
    "bodies": ["person", "people", "man", "men", "woman", "women", "child", "children", "player", "players",
               "skier", "skiers", "skateboarder", "standing", "running", "walking"],
    "places": ["beach", "street", "park", "field", "room", "kitchen", "ocean", "mountain", "road", "city",
               "savanna", "sky", "outside", "outdoors"],
    "words": ["sign", "signs", "text", "letters", "words", "book", "books", "stop sign"],
    "objects": ["object", "objects", "table", "chair", "cup", "bottle"],
}
PROBES = {"faces": "a photo of a person", "bodies": "a person standing in a scene",
          "places": "a wide view of an outdoor place", "words": "a sign with written text",
          "objects": "an object on a table"}
CONDITIONS = ("target", "control_patches", "other_category")
MIN_BOOT = 100  # fewer resamples leave a 95 % interval's tails a couple of draws each


@dataclass
class StimulationTargets:
    """Pass/fail thresholds of the LM's result (None: not checked).

    Attributes
    ----------
    spearman_min : float, optional
        Least Spearman correlation of the target's concept rate with α.
    specificity_min : float, optional
        Least target rise / control-patch rise (met only if the rise difference's interval also
        lies above 0; undecided, None, when the ratio is undefined but the difference lies above 0).
    """

    spearman_min: float | None = None
    specificity_min: float | None = None


@dataclass
class StimulationConfig:
    """Stimulation experiment settings (YAML: ``fmrilm/configs/stimulation_*.yaml``).

    Attributes
    ----------
    corpus, tokenizer, model : str
        As for evaluation: the corpus gives the held-out stimuli and the task dataset.
    backbone : str
        As for evaluation: the base of a LoRA model that has moved ("" for the recorded one).
    out : str
    subject : int
        Row of the subject in the task dataset.
    target, other_category : str
        Localizer categories (faces, bodies, places, words, objects).
    n_vertices : int
    smoothing_steps : int
        Neighbour-averaging passes over the localizer contrast before its top vertices are taken
        (0: raw contrast).
    n_control_patches : int
        Random patches of the target's size and shape.
    control_min_distance_mm : float
        Least geodesic distance of a control vertex from the target patch (0: only no overlap).
    alphas : tuple of float
        Perturbation sizes (>= 0) in units of the betas' SD; must include 0.
    n_scans : int
        Scans perturbed at the target and the other category's patch.
    n_control_scans : int, optional
        Scans (a random subset of those) per control patch; default all.
    concept_free_stimuli : bool
        Only stimuli none of whose reference captions contain a concept word.
    n_boot : int
        Bootstrap resamples of every interval.
    concept_words : list of str, optional
        Words that name the target concept (default: :data:`CONCEPT_WORDS`).
    probe : str, optional
        Concept probe sentence (default: :data:`PROBES`).
    targets : StimulationTargets
        Pass/fail thresholds (the issue's, in the YAML; default: none checked).

    Counts and α default to library values; the demo's are all stated in ``stimulation_demo.yaml``.
    """

    corpus: str = required_path()  # run paths: required (no demo default; stimulation_demo.yaml names the demo's)
    tokenizer: str = required_path()
    model: str = required_path()
    backbone: str = ""
    out: str = required_path()
    subject: int = 0
    target: str = "faces"
    other_category: str = "places"
    n_vertices: int = 300
    smoothing_steps: int = 5
    n_control_patches: int = 10
    control_min_distance_mm: float = 0.0
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    n_scans: int = 30
    n_control_scans: int | None = None
    concept_free_stimuli: bool = True
    max_new_tokens: int = 24
    batch_size: int = 32
    n_boot: int = 1000
    seed: int = 0
    concept_words: list[str] = field(default_factory=list)
    probe: str = ""
    targets: StimulationTargets = field(default_factory=StimulationTargets)

    def words(self) -> list[str]:
        return list(self.concept_words) or CONCEPT_WORDS[self.target]

    def probe_text(self) -> str:
        return self.probe or PROBES[self.target]

    def validate(self, categories) -> None:
        for name in ("target", "other_category"):
            if getattr(self, name) not in categories:
                raise InputError("stimulation config", name,
                                 f"{getattr(self, name)!r} is not a localizer category {sorted(set(categories))}")
        if self.target == self.other_category:
            raise InputError("stimulation config", "other_category", "must differ from target")
        alphas = [float(a) for a in self.alphas]
        if 0.0 not in alphas or len(set(alphas)) < 2 or min(alphas) < 0:
            raise InputError("stimulation config", "alphas", f"{self.alphas}: need 0 and at least one positive value")
        for name in ("n_vertices", "n_scans", "n_control_patches"):
            if getattr(self, name) < 1:
                raise InputError("stimulation config", name, f"{getattr(self, name)} < 1")
        if self.n_control_scans is not None and not 1 <= self.n_control_scans <= self.n_scans:
            raise InputError("stimulation config", "n_control_scans", f"{self.n_control_scans}: need 1..n_scans")
        if self.control_min_distance_mm < 0:
            raise InputError("stimulation config", "control_min_distance_mm", f"{self.control_min_distance_mm} < 0")
        if self.n_boot < MIN_BOOT:
            raise InputError("stimulation config", "n_boot", f"{self.n_boot} < {MIN_BOOT}")
        if not self.concept_words and self.target not in CONCEPT_WORDS:
            raise InputError("stimulation config", "concept_words", f"no default words for {self.target!r}")


def _concept_pattern(words) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b",
                      re.IGNORECASE)


def names_concept(captions: list[str], words) -> np.ndarray:
    """Whether each caption contains any of `words` as a whole word (case-insensitive): bool [N]."""
    pattern = _concept_pattern(words)
    return np.array([bool(pattern.search(c)) for c in captions], bool)


def concept_rate(captions: list[str], words) -> float:
    """Fraction of captions containing any of `words` as whole words (case-insensitive)."""
    return float(np.mean(names_concept(captions, words)))


def perturb(scans: np.ndarray, vertices: np.ndarray, alpha: float, sd: np.ndarray) -> np.ndarray:
    """A copy of `scans` [N, V] with ``alpha · sd`` added at `vertices` (`sd` [V] per vertex)."""
    out = np.array(scans, np.float32, copy=True)
    out[:, vertices] += np.float32(alpha) * np.asarray(sd, np.float32)[vertices]
    return out


def caption_scans(captioner, tokenizer, scans: np.ndarray, cfg) -> list[str]:
    """Greedy captions of `scans` [N, V], re-tokenized with the run's tokenizer: one ``generate()`` call
    of the run's captioner (its retriever, if any, retrieves from the perturbed scans' tokens too)."""
    from fmrilm.evaluation.task_eval import CAPTION_PROMPT
    from fmrilm.tokenizer.features import encode_betas

    tokens, latents = encode_betas(tokenizer, scans)
    return captioner.generate([t[None] for t in tokens], [CAPTION_PROMPT] * len(tokens),
                              max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                              brain_latents=[z[None] for z in latents] if captioner.reads_latents else None)


def observer_choice(scans: np.ndarray, clean: np.ndarray, variance: np.ndarray, factor: np.ndarray | None,
                    n_repeats: int) -> np.ndarray:
    """Row of `clean` [M, V] most likely to underlie each scan [N, V] under gaussian noise of single-trial
    covariance ``diag(variance) + factor factorᵀ``, `n_repeats` trials averaged: int [N]."""
    from fmrilm.evaluation.ideal_observer import log_likelihoods

    return np.argmax(log_likelihoods(scans, clean, np.sqrt(variance), n_repeats, factor=factor), axis=1)


def _targets(cfg: StimulationConfig, lm: dict) -> dict:
    """Each configured threshold with the value it is checked on and whether it is met."""
    out = {}
    if cfg.targets.spearman_min is not None:
        rho = lm["conditions"]["target"]["spearman"]
        out["spearman_min"] = {"required": cfg.targets.spearman_min, "value": rho,
                               "met": rho is not None and rho >= cfg.targets.spearman_min}
    if cfg.targets.specificity_min is not None:
        ratio, difference_lo = lm["specificity"]["value"], lm["rise_difference_vs_controls"]["ci"][0]
        met = (difference_lo > 0 and ratio >= cfg.targets.specificity_min) if ratio is not None \
            else (None if difference_lo > 0 else False)
        out["specificity_min"] = {"required": cfg.targets.specificity_min, "value": ratio, "met": met}
    return out


def _read_out(scans, sd, blocks, alphas, caption, decode, score, progress: bool) -> tuple[list, dict]:
    """Captions, their probe SemScores and the ideal observer's picks for every α and block.

    `blocks` are ``(condition, scan rows, vertices)``; `caption`, `decode` and `score` map a batch of
    scans to captions, a batch of scans to candidate rows, and captions to SemScores. Returns, per α,
    per block ``(captions, semscores, decoded rows)``, and the seconds spent captioning and decoding.
    """
    from tqdm.auto import tqdm

    # α = 0 leaves every scan untouched, whichever patch: its scans are captioned once and shared.
    batches = [scans if alpha == 0 else np.concatenate([perturb(scans[rows], v, alpha, sd) for _, rows, v in blocks])
               for alpha in alphas]
    t0 = time.time()
    captions = [caption(batch) for batch in tqdm(batches, desc="stimulation: captions per α", disable=not progress)]
    t1 = time.time()
    # One observer call for all α: its cost is mostly the candidates' side, whatever the number of scans.
    decoded = np.split(decode(np.concatenate(batches)), np.cumsum([len(b) for b in batches])[:-1])
    seconds = {"captioning": t1 - t0, "ideal_observer": time.time() - t1}
    readouts = []
    for alpha, texts, picks in zip(alphas, captions, decoded):
        scores = score(texts)
        if alpha == 0:
            readouts.append([([texts[i] for i in rows], scores[rows], picks[rows]) for _, rows, _ in blocks])
        else:
            edges = np.cumsum([0] + [len(rows) for _, rows, _ in blocks])
            readouts.append([(texts[a:b], scores[a:b], picks[a:b]) for a, b in zip(edges[:-1], edges[1:])])
    return readouts, seconds


def _reader_results(readouts, blocks, alphas, cfg, names, candidates, candidate_names, rng) -> tuple[dict, dict]:
    """The LM's and the ideal observer's results (:func:`~fmrilm.stimulation.statistics.compare_conditions`),
    their dose rows completed with the LM's captions and SemScores and the observer's decoded stimuli.

    `names` maps captions to whether each names the concept; `candidate_names` says it of each candidate.
    """
    from fmrilm.stimulation.statistics import bootstrap_means, compare_conditions, dose_curve, spearman

    def by_condition(row) -> dict[str, list]:
        """One α's per-block readouts grouped by condition, in block order."""
        return {name: [out for (cond, _, _), out in zip(blocks, row) if cond == name] for name in CONDITIONS}

    def arrays(value) -> dict[str, np.ndarray]:
        """A per-block readout value → [A, S] (target, other category) and [A, P, K] (control patches)."""
        out = {}
        for name in CONDITIONS:
            stacked = np.asarray([[value(*r) for r in by_condition(row)[name]] for row in readouts], np.float64)
            out[name] = stacked if name == "control_patches" else stacked[:, 0]
        return out

    lm = compare_conditions(arrays(lambda c, s, d: names(c)), alphas, cfg.n_boot, rng)
    observer = compare_conditions(arrays(lambda c, s, d: candidate_names[d]), alphas, cfg.n_boot, rng)
    for name, values in arrays(lambda c, s, d: s).items():
        doses = lm["conditions"][name]["doses"]
        for dose, extra in zip(doses, dose_curve(values, bootstrap_means(values, cfg.n_boot, rng), alphas,
                                                 "probe_semscore")):
            dose.update(extra)
        lm["conditions"][name]["spearman_semscore"] = spearman(alphas, [d["probe_semscore"] for d in doses])
    for i, row in enumerate(readouts):
        for name, outs in by_condition(row).items():
            captions, decoded = [c for c, _, _ in outs], [candidates[d].tolist() for _, _, d in outs]
            single = name != "control_patches"
            lm["conditions"][name]["doses"][i]["captions"] = captions[0] if single else captions
            observer["conditions"][name]["doses"][i]["decoded_stimuli"] = decoded[0] if single else decoded
    return lm, observer


def run_stimulation(cfg: StimulationConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Run the experiment; write ``stimulation.json``, ``dose_response.png`` and ``vertices.png``."""
    from fmrilm.artifacts import check_compatible, resolve_model_dir, resolve_tokenizer_dir
    from fmrilm.brain.task_data import TaskData
    from fmrilm.config import save_config
    from fmrilm.corpus.heldout import load_heldout
    from fmrilm.io import atomic_dir, write_json
    from fmrilm.retrieval.captioner import Captioner
    from fmrilm.stimulation.patches import describe_patch, select_patches
    from fmrilm.stimulation.plotting import plot_dose_response, plot_vertices
    from fmrilm.stimulation.statistics import CONFIDENCE
    from fmrilm.textembed import embed_texts
    from fmrilm.tokenizer.data import dataset_atlas
    from fmrilm.tokenizer.model import BrainTokenizer

    started = time.time()
    check_required(cfg, "stimulation config")
    if Path(cfg.out).exists() and not overwrite:
        raise InputError(cfg.out, "out", "already exists (pass --force to replace it)")
    heldout = load_heldout(cfg.corpus)
    tokenizer_dir, model_dir = resolve_tokenizer_dir(cfg.tokenizer), resolve_model_dir(cfg.model)
    check_compatible(tokenizer_dir, model_dir, cfg.corpus, splits=heldout.splits)
    task_path = heldout.input_path("task_dataset")
    if task_path is None:
        raise InputError(Path(cfg.corpus) / "corpus.json", "inputs.task_dataset", "the corpus has no task data")
    data = TaskData(task_path)
    atlas = dataset_atlas(data.atlas_info, task_path)
    # Separate streams: changing the number of control patches leaves the scans and the bootstrap alone.
    patch_rng, scan_rng, boot_rng = (stream(cfg.seed, f"stimulation.{name}")
                                     for name in ("patches", "scans", "bootstrap"))
    patches = select_patches(data, atlas, cfg, patch_rng)
    words, probe = cfg.words(), embed_texts([cfg.probe_text()])[0]
    pool = np.asarray(heldout.test_stimuli)
    if cfg.concept_free_stimuli:
        pool = pool[[concept_rate(data.stimuli[m]["captions"], words) == 0 for m in pool]]
        if pool.size == 0:
            raise InputError(cfg.corpus, "test stimuli", f"every test stimulus names {cfg.target!r} in a caption "
                                                         "(set concept_free_stimuli: false)")
    # The ideal observer's candidates: the training stimuli, under the simulator's clean responses and
    # full noise covariance (both raise InputError on data without simulator ground truth).
    candidates = np.asarray(heldout.train_stimuli)
    clean = np.asarray(data.clean(cfg.subject)[candidates])
    variance, factor = data.noise_covariance(cfg.subject)
    n_repeats = int(data.trial_repeat.max()) + 1
    candidate_names = np.array([concept_rate(data.stimuli[m]["captions"], words) > 0 for m in candidates])
    tokenizer = BrainTokenizer.from_pretrained(tokenizer_dir, data.atlas_info)
    captioner = Captioner.load(model_dir, cfg.backbone or None)
    stimuli = scan_rng.permutation(pool)[: cfg.n_scans]
    scans = data.mean_betas(cfg.subject, stimuli)
    sd = scans.std(0)
    n_control_scans = min(cfg.n_control_scans or len(stimuli), len(stimuli))
    slots = np.stack([np.sort(scan_rng.choice(len(stimuli), n_control_scans, replace=False))
                      for _ in patches["control_patches"]])
    everything = np.arange(len(stimuli))
    # One row block per (condition, patch); every α captions all blocks in a single generate() call.
    blocks = [("target", everything, patches["target"]),
              *(("control_patches", s, v) for s, v in zip(slots, patches["control_patches"])),
              ("other_category", everything, patches["other_category"])]
    alphas = sorted({float(a) for a in cfg.alphas})

    readouts, seconds = _read_out(
        scans, sd, blocks, alphas, caption=lambda batch: caption_scans(captioner, tokenizer, batch, cfg),
        decode=lambda batch: observer_choice(batch, clean, variance, factor, n_repeats),
        score=lambda captions: embed_texts(captions) @ probe, progress=progress)

    lm, observer = _reader_results(readouts, blocks, alphas, cfg, lambda texts: names_concept(texts, words),
                                   candidates, candidate_names, boot_rng)
    n_captions = len(stimuli) + (len(alphas) - 1) * sum(len(rows) for _, rows, _ in blocks)
    summary = {"target": cfg.target, "other_category": cfg.other_category, "subject": cfg.subject,
               "alphas": alphas, "interval": CONFIDENCE, "n_boot": cfg.n_boot,
               "n_scans": int(len(stimuli)), "n_control_patches": len(patches["control_patches"]),
               "n_control_scans": int(n_control_scans), "concept_free_stimuli": cfg.concept_free_stimuli,
               "stimuli": stimuli.tolist(), "control_scan_slots": slots.tolist(),
               "concept_words": words, "probe": cfg.probe_text(),
               "patches": {"control_min_distance_mm": cfg.control_min_distance_mm,
                           "target": describe_patch(patches["target"], atlas),
                           "other_category": describe_patch(patches["other_category"], atlas),
                           "control_patches": [{**describe_patch(v, atlas), "seeds": s} for v, s in
                                               zip(patches["control_patches"], patches["control_seeds"])]},
               "lm": lm,
               "ideal_observer": {**observer, "candidates": "training stimuli", "n_candidates": int(candidates.size),
                                  "n_repeats": n_repeats},
               "targets": _targets(cfg, lm),
               "vertices": {"target": patches["target"].tolist(), "other_category": patches["other_category"].tolist(),
                            "control_patches": [v.tolist() for v in patches["control_patches"]]},
               "cost": {"generate_calls": len(alphas), "captions": int(n_captions), "seconds": seconds}}
    with atomic_dir(cfg.out, overwrite) as tmp:
        # Headless-safe under any backend: the plots never touch pyplot (fmrilm.tokenizer.plotting).
        plot_dose_response(summary, output_file=tmp / "dose_response.png")
        plot_vertices(patches, atlas, cfg.target, cfg.other_category, output_file=tmp / "vertices.png")
        seconds["total"] = time.time() - started
        write_json(tmp / "stimulation.json", summary)
        save_config(cfg, tmp / "stimulation_config.yaml")
    return summary
