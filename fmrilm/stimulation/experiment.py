"""In-silico microstimulation: add graded activity to localized vertices and read the captions.

Protocol (after CorText):

1. Pick the `n_vertices` cortical vertices with the largest localizer contrast "target category vs
   the other categories" (:func:`fmrilm.brain.localizer.localizer_contrast`), smoothed on the mesh.
   The localizer runs are independent of the task trials, so selection and test never share noise.
2. Take `n_scans` held-out test scans of the subject (corpus test split, repeats averaged) of
   stimuli whose reference captions do not name the target concept (so the rate starts near 0 and
   its rise is what stimulation adds; ``concept_free_stimuli: false`` takes any), and add
   ``α · pattern``, where the pattern is each selected vertex's SD across the test scans (so α is
   in units of the betas' SD) and 0 elsewhere.
3. Re-tokenize with the run's tokenizer, generate captions greedily, and measure the rate of
   captions naming the target concept (whole-word match of the concept words) and the SemScore
   of the captions to a concept probe sentence, for every α.
4. Controls: the same number of random cortical vertices, and the patch of another category.

Summary: Spearman correlation of the target rate with α, and specificity = rise of the target rate
(largest α minus α = 0) with the target patch over the rise with random vertices; the random rise is
floored at one caption's worth (1 / n_scans) so a flat control does not divide by zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fmrilm.errors import InputError

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
CONDITIONS = ("target", "random", "other_category")


@dataclass
class StimulationConfig:
    """Stimulation experiment settings (YAML: ``fmrilm/configs/stimulation_*.yaml``).

    Attributes
    ----------
    corpus, tokenizer, model : str
        As for evaluation: the corpus gives the held-out stimuli and the task dataset.
    out : str
    subject : int
        Row of the subject in the task dataset.
    target, other_category : str
        Localizer categories (faces, bodies, places, words, objects).
    n_vertices : int
    smoothing_steps : int
        Neighbour-averaging passes over the localizer contrast before its top vertices are taken
        (0: raw contrast).
    alphas : tuple of float
        Perturbation sizes in units of the betas' SD; must include 0.
    n_scans : int
    concept_free_stimuli : bool
        Only stimuli none of whose reference captions contain a concept word.
    concept_words : list of str, optional
        Words that name the target concept (default: :data:`CONCEPT_WORDS`).
    probe : str, optional
        Concept probe sentence (default: :data:`PROBES`).
    """

    corpus: str = "runs/demo/corpus"
    tokenizer: str = "runs/demo/tokenizer"
    model: str = "runs/demo/instruct"
    out: str = "runs/demo/stimulation"
    subject: int = 0
    target: str = "faces"
    other_category: str = "places"
    n_vertices: int = 300
    smoothing_steps: int = 5
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    n_scans: int = 30
    concept_free_stimuli: bool = True
    max_new_tokens: int = 24
    batch_size: int = 32
    seed: int = 0
    concept_words: list[str] = field(default_factory=list)
    probe: str = ""

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
        if 0.0 not in [float(a) for a in self.alphas] or len(self.alphas) < 2:
            raise InputError("stimulation config", "alphas", f"{self.alphas}: need 0 and at least one other value")
        if self.n_vertices < 1 or self.n_scans < 1:
            raise InputError("stimulation config", "n_vertices/n_scans", "must be >= 1")
        if not self.concept_words and self.target not in CONCEPT_WORDS:
            raise InputError("stimulation config", "concept_words", f"no default words for {self.target!r}")


def concept_rate(captions: list[str], words) -> float:
    """Fraction of captions containing any of `words` as whole words (case-insensitive)."""
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b",
                         re.IGNORECASE)
    return float(np.mean([bool(pattern.search(c)) for c in captions]))


def select_vertices(data, atlas, cfg: StimulationConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Vertices stimulated in each condition (localizer top-N; random cortex; other category's top-N)."""
    from fmrilm.brain.encoding_model import smooth, smoothing_operator
    from fmrilm.brain.localizer import localizer_contrast, top_vertices

    betas, categories = data.localizer(cfg.subject)
    cfg.validate(categories)
    cortex = atlas.labels > 0
    # The usual spatial smoothing of a localizer map: unsmoothed, the top vertices of a noisy
    # contrast scatter over many parcels.
    op = smoothing_operator(atlas)

    def patch(category: str) -> np.ndarray:
        contrast = smooth(localizer_contrast(betas, categories, category), op, cfg.smoothing_steps)
        return top_vertices(contrast, cfg.n_vertices, cortex)

    return {"target": patch(cfg.target),
            "random": np.sort(rng.choice(np.flatnonzero(cortex), cfg.n_vertices, replace=False)),
            "other_category": patch(cfg.other_category)}



def stimulate(model, tokenizer, scans: np.ndarray, vertices: np.ndarray, alpha: float, cfg) -> list[str]:
    """Captions of `scans` with ``alpha · SD`` added at `vertices` (SD per vertex across the scans)."""
    from fmrilm.evaluation.heldout import tokenize_betas
    from fmrilm.evaluation.task_eval import CAPTION_PROMPT
    from fmrilm.llm.generate import generate

    perturbed = np.array(scans, np.float32, copy=True)
    perturbed[:, vertices] += np.float32(alpha) * scans[:, vertices].std(0)
    tokens = tokenize_betas(tokenizer, perturbed)
    return generate(model, [t[None] for t in tokens], [CAPTION_PROMPT] * len(tokens),
                    max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)


def _spearman(x, y) -> float | None:
    from scipy.stats import spearmanr

    if np.ptp(y) == 0:
        return None  # undefined for a flat response
    return float(spearmanr(x, y).statistic)


def run_stimulation(cfg: StimulationConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Run the experiment; write ``stimulation.json``, ``dose_response.png`` and ``vertices.png``."""
    from tqdm.auto import tqdm

    from fmrilm.brain.task_data import TaskData
    from fmrilm.config import save_config
    from fmrilm.evaluation.heldout import load_heldout, resolve_model_dir, resolve_tokenizer_dir
    from fmrilm.io import atomic_dir, write_json
    from fmrilm.llm.checkpoint import load_brainlm
    from fmrilm.stimulation.plotting import plot_dose_response, plot_vertices
    from fmrilm.textembed import embed_texts
    from fmrilm.tokenizer.data import dataset_atlas
    from fmrilm.tokenizer.model import BrainTokenizer

    if Path(cfg.out).exists() and not overwrite:
        raise InputError(cfg.out, "out", "already exists (pass --force to replace it)")
    heldout = load_heldout(cfg.corpus)
    task_path = heldout.input_path("task_dataset")
    if task_path is None:
        raise InputError(Path(cfg.corpus) / "corpus.json", "inputs.task_dataset", "the corpus has no task data")
    data = TaskData(task_path)
    atlas = dataset_atlas(data.atlas_info, task_path)
    rng = np.random.default_rng(cfg.seed)
    vertices = select_vertices(data, atlas, cfg, rng)
    tokenizer = BrainTokenizer.from_pretrained(resolve_tokenizer_dir(cfg.tokenizer), data.atlas_info)
    model = load_brainlm(resolve_model_dir(cfg.model))
    words, probe = cfg.words(), embed_texts([cfg.probe_text()])[0]
    pool = np.asarray(heldout.test_stimuli)
    if cfg.concept_free_stimuli:
        pool = pool[[concept_rate(data.stimuli[m]["captions"], words) == 0 for m in pool]]
        if pool.size == 0:
            raise InputError(cfg.corpus, "test stimuli", f"every test stimulus names {cfg.target!r} in a caption "
                                                         "(set concept_free_stimuli: false)")
    stimuli = np.sort(rng.permutation(pool)[: cfg.n_scans])
    scans = data.mean_betas(cfg.subject, stimuli)
    alphas = sorted(float(a) for a in cfg.alphas)
    baseline = stimulate(model, tokenizer, scans, vertices["target"], 0.0, cfg)
    results = {}
    for condition in tqdm(CONDITIONS, desc="stimulation", disable=not progress):
        rows = []
        for alpha in alphas:
            # α = 0 leaves every scan untouched, whichever vertices are chosen: reuse one generation.
            captions = baseline if alpha == 0 else stimulate(model, tokenizer, scans, vertices[condition], alpha, cfg)
            rows.append({"alpha": alpha, "concept_rate": concept_rate(captions, words),
                         "probe_semscore": float((embed_texts(captions) @ probe).mean()), "captions": captions})
        rate = [r["concept_rate"] for r in rows]
        results[condition] = {"doses": rows, "spearman_rate": _spearman(alphas, rate),
                              "spearman_semscore": _spearman(alphas, [r["probe_semscore"] for r in rows]),
                              "rate_rise": rate[-1] - rate[0], "n_vertices": int(vertices[condition].size)}
    floor = 1.0 / len(stimuli)
    summary = {"target": cfg.target, "other_category": cfg.other_category, "subject": cfg.subject,
               "alphas": alphas, "n_scans": int(len(stimuli)), "concept_free_stimuli": cfg.concept_free_stimuli,
               "stimuli": stimuli.tolist(),
               "concept_words": words, "probe": cfg.probe_text(),
               "conditions": results,
               "specificity_vs_random": results["target"]["rate_rise"] / max(results["random"]["rate_rise"], floor),
               "specificity_vs_other": results["target"]["rate_rise"]
               / max(results["other_category"]["rate_rise"], floor),
               "targets": {"monotone_spearman_ge_0.9": (results["target"]["spearman_rate"] or 0.0) >= 0.9}}
    summary["targets"]["specific_ge_3x_random"] = summary["specificity_vs_random"] >= 3.0
    summary["vertices"] = {k: v.tolist() for k, v in vertices.items()}
    with atomic_dir(cfg.out, overwrite) as tmp:
        plot_dose_response(summary, tmp / "dose_response.png")
        plot_vertices(vertices, atlas, tmp / "vertices.png", cfg.target, cfg.other_category)
        write_json(tmp / "stimulation.json", summary)
        save_config(cfg, tmp / "stimulation_config.yaml")
    return summary
