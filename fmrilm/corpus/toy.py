"""Small input datasets in the exact task / rest / tokens layouts, for tests, benchmarks and smoke runs.

They exercise the corpus without the synthetic worlds or a trained tokenizer: the token ids are
seeded random integers (a stand-in with the tokens-dataset manifest of ``fmrilm tokenizer encode``),
the betas a per-stimulus pattern plus noise, the rest runs AR(1) noise sharing one signal per network.
Every fourth non-novel stimulus has a question naming the novel category, so the training filter
has work to do; two text-only scenes name it too. The splits file is decided by the real
:mod:`fmrilm.brain.splits` with :data:`TOY_SPLIT_RULES`, and the fake tokenizer records it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmrilm.brain.atlas import Atlas
from fmrilm.brain.splits import SplitsConfig, read_splits, write_run_splits
from fmrilm.brain.store import Dataset, DatasetWriter
from fmrilm.config import load_config
from fmrilm.corpus.descriptors_task import network_index

CATEGORIES = ("dog", "cat", "car", "tree", "boat", "zebra")
NOVEL = ("zebra",)
PLACES = ("park", "street", "field", "kitchen", "harbour")


def _stimulus(m: int, category: str, rng) -> dict:
    place = PLACES[m % len(PLACES)]
    n = int(rng.integers(1, 4))
    captions = [f"a {category} in the {place}", f"{n} {category}s near a {place}",
                f"a photo of a {category} at the {place}", f"the {category} stands in a {place}",
                f"a {place} scene with a {category}"]
    qa = [{"question": f"Is there a {category} in the image?", "answer": "yes", "type": "yesno"},
          {"question": f"How many {category}s are there?", "answer": str(n), "type": "count"},
          {"question": "Where was the picture taken?", "answer": place, "type": "scene"}]
    if m % 4 == 0 and category not in NOVEL:
        qa.append({"question": f"Is there a {NOVEL[0]}?", "answer": "no", "type": "yesno"})
    return {"stimulus": m, "key": f"stim-{m:06d}", "captions": captions, "qa": qa, "categories": [category],
            "supercategories": ["animal" if category in ("dog", "cat", "zebra") else "object"],
            "novel": category in NOVEL, "graph": {"objects": [category], "relations": []}}


def write_toy_task(out, atlas: Atlas, n_stimuli: int = 12, n_subjects: int = 2, repeats: int = 2,
                   seed: int = 0) -> Path:
    """Task dataset: every subject sees every stimulus `repeats` times (one session per repeat)."""
    rng = np.random.default_rng(seed)
    stimuli = [_stimulus(m, CATEGORIES[m % len(CATEGORIES)], rng) for m in range(n_stimuli)]
    grid = np.array([(s, m, r) for s in range(n_subjects) for r in range(repeats) for m in range(n_stimuli)])
    patterns = rng.standard_normal((n_stimuli, atlas.n_parcels)).astype(np.float32)
    betas = atlas.to_vertices(patterns[grid[:, 1]]) + 0.5 * rng.standard_normal(
        (len(grid), atlas.n_vertices)).astype(np.float32)
    with DatasetWriter(out, "task", atlas.describe(), {"toy": "task"}, seed, overwrite=True) as w:
        w.write_array("betas", betas.astype(np.float32))
        w.write_array("trial_stimulus", grid[:, 1].astype(np.int32))
        w.write_array("trial_subject", grid[:, 0].astype(np.int16))
        w.write_array("trial_session", grid[:, 2].astype(np.int16))
        w.write_array("trial_repeat", grid[:, 2].astype(np.int8))
        w.write_table("stimuli", stimuli)
        w.write_table("text_scenes", [dict(_stimulus(n_stimuli + i, NOVEL[0], rng), stimulus=None, key=f"text-{i:06d}")
                                      for i in range(2)])
        w.write_table("subjects", [{"subject": f"sub-{s + 1:02d}"} for s in range(n_subjects)])
        return w.finish(n_stimuli=n_stimuli, n_subjects=n_subjects, novel_categories=list(NOVEL),
                        source="synthetic")


def toy_runs(atlas: Atlas, n_subjects: int, n_timepoints: int, seed: int = 0) -> np.ndarray:
    """[S, T, P] AR(1) parcel time series with one shared signal per network (so FC has structure)."""
    rng = np.random.default_rng(seed)
    nets = network_index(atlas)
    shocks = rng.standard_normal((n_subjects, n_timepoints, 7))
    signal = np.zeros_like(shocks)
    for t in range(1, n_timepoints):
        signal[:, t] = 0.6 * signal[:, t - 1] + shocks[:, t]
    weight = rng.uniform(0.3, 1.0, (n_subjects, 1, 1))
    noise = rng.standard_normal((n_subjects, n_timepoints, atlas.n_parcels))
    return (weight * signal[:, :, nets] + noise).astype(np.float32)


def write_toy_rest(out, atlas: Atlas, n_subjects: int = 8, n_timepoints: int = 120, tr: float = 2.0,
                   seed: int = 0) -> Path:
    """Rest dataset with phenotypes (sex, age, diagnosis, site) per subject."""
    rng = np.random.default_rng(seed + 1)
    subjects = [{"subject": f"sub-{s + 1:04d}", "age": float(rng.uniform(40, 80)), "sex": "FM"[s % 2],
                 "diagnosis": "patient" if s % 3 == 0 else "control", "site": f"site-{s // 4 % 2 + 1}"}
                for s in range(n_subjects)]
    with DatasetWriter(out, "rest", atlas.describe(), {"toy": "rest"}, seed, overwrite=True) as w:
        w.write_array("timeseries", toy_runs(atlas, n_subjects, n_timepoints, seed))
        w.write_table("subjects", subjects)
        return w.finish(tr=tr, n_subjects=n_subjects, n_timepoints=n_timepoints, source="synthetic",
                        phenotype_effects={})


def write_toy_tokens(out, dataset, codebook_size: int = 512, levels: int = 1, window: int = 16, seed: int = 0,
                     tokenizer_atlas: dict | None = None, splits=None, latent_dim: int = 0) -> Path:
    """Tokens dataset for `dataset` (random ids): [N, P·L] for task data, [S, T // window, P·L] for rest.

    `tokenizer_atlas` overrides the atlas identity the fake tokenizer claims (to test mismatches);
    `splits` (a splits file) is the one the fake tokenizer claims to have been trained on; a
    `latent_dim` > 0 adds random encoder outputs (array ``latents``, [..., P, latent_dim]).
    """
    ds = Dataset(dataset)
    p = ds.atlas_info["n_parcels"]
    if ds.kind == "task":
        lead = (ds.manifest["arrays"]["betas"]["shape"][0],)
    else:
        s, t, _ = ds.manifest["arrays"]["timeseries"]["shape"]
        lead = (s, t // window)
    tokens = np.random.default_rng(seed + 2).integers(0, codebook_size, lead + (p * levels,)).astype(np.int16)
    tokenizer = {"name": "toy-random", "codebook_size": codebook_size, "levels": levels,
                 "fingerprint": f"toy-{seed}-{codebook_size}", "atlas": tokenizer_atlas or ds.atlas_info,
                 "splits": read_splits(splits).record() if splits else None}
    with DatasetWriter(out, "tokens", ds.atlas_info, {"toy": "tokens"}, seed, overwrite=True) as w:
        w.write_array("tokens", tokens)
        if latent_dim > 0:
            rng = np.random.default_rng(seed + 3)
            w.write_array("latents", rng.standard_normal(lead + (p, latent_dim)).astype(np.float16))
        return w.finish(tokenizer=tokenizer, source_dataset=str(ds.path), source_kind=ds.kind, window=window)


# The toy inputs' split rules (SplitsConfig overrides): the same as the tests' splits_tiny.yaml, stated
# here because the package never reads the tests' configs.
TOY_SPLIT_RULES = ("val_fraction=0.1", "test_fraction=0.25", "heldout_task_subjects=1", "rest_val_fraction=0.1",
                   "rest_test_fraction=0.2", "rest_fewshot_subjects=2")


def write_toy_inputs(root, atlas: Atlas, n_stimuli: int = 12, n_task_subjects: int = 2, repeats: int = 2,
                     n_rest_subjects: int = 10, n_timepoints: int = 128, seed: int = 0,
                     split_rules: list[str] | None = None, latent_dim: int = 0) -> dict:
    """All four corpus inputs and their splits file under `root`; returns the paths as CorpusConfig fields.

    `split_rules` are overrides of :data:`TOY_SPLIT_RULES` (e.g. ``["heldout_task_subjects=0"]``);
    `latent_dim` > 0 gives the task tokens encoder outputs (rest scans then read codes).
    """
    root = Path(root)
    task = write_toy_task(root / "task", atlas, n_stimuli, n_task_subjects, repeats, seed)
    rest = write_toy_rest(root / "rest", atlas, n_rest_subjects, n_timepoints, seed=seed)
    splits = write_run_splits(load_config(SplitsConfig, None, [
        *TOY_SPLIT_RULES, f"task_dataset={task}", f"rest_dataset={rest}", f"out={root / 'splits.json'}", f"seed={seed}",
        *(split_rules or [])]), overwrite=True)
    return {"task_dataset": str(task), "rest_dataset": str(rest), "splits": str(splits),
            "task_tokens": str(write_toy_tokens(root / "task_tokens", task, seed=seed, splits=splits,
                                                latent_dim=latent_dim)),
            "rest_tokens": str(write_toy_tokens(root / "rest_tokens", rest, seed=seed, splits=splits))}
