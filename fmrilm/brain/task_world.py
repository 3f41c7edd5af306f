"""The synthetic NSD-like task world: scenes → captions/QA → vertex responses, with ground truth.

Launch::

    fmrilm world task --config task_world_demo --out runs/task_world
    fmrilm world task --config tests/configs/task_world_tiny.yaml --out /tmp/tiny_world --force
    fmrilm world task --config task_world_demo --out runs/nsd_scale --set n_stimuli=10000 n_subjects=8

Writes a task dataset (manifest kind ``"task"``, layout in :mod:`fmrilm.brain.task_data`):
single-trial ``betas`` [N_trials, V] z-scored per (subject, session), the trial tables, the
stimuli (scene graphs, ~5 captions, QA, novel flag), text-only scenes that name the novel
categories but are never shown (``text_scenes``: language data for the LM, no brain data), and the ground truth of
:mod:`fmrilm.brain.encoding_model` (``clean``, ``weights``, ``noise_ceiling``, ``noise_basis``, ...) plus
fLoc-style ``localizer_betas``. Each subject sees every stimulus ``n_repeats`` times in a seeded
random order split into sessions of about ``trials_per_session`` trials. Arrays are memmaps
filled one session (or stimulus block) at a time, so NSD scale (10k stimuli × 3 repeats × 8
subjects) streams to disk. Every random stream is keyed by (seed, purpose, subject, session),
so a seed reproduces the dataset byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fmrilm.brain.atlas import Atlas
from fmrilm.brain.encoding_model import (
    PATCH_CATEGORIES,
    EncodingConfig,
    GroupModel,
    NoiseModel,
    SubjectModel,
    stimulus_features,
)
from fmrilm.brain.localizer import LOCALIZER_CATEGORIES, LocalizerConfig, simulate_localizer
from fmrilm.brain.scenes import (
    CATEGORIES,
    CATEGORY_SYNONYMS,
    DEFAULT_NOVEL,
    TEMPLATES,
    check_novel,
    make_stimuli,
    make_text_scenes,
)
from fmrilm.brain.store import DatasetWriter
from fmrilm.errors import InputError
from fmrilm.seeds import stream
from fmrilm.textembed import embed_texts


@dataclass
class TaskWorldConfig:
    """Size, seed and model parameters of a synthetic task world."""

    seed: int = 0
    n_stimuli: int = 1200
    n_subjects: int = 3
    n_repeats: int = 3
    trials_per_session: int = 750
    captions_per_stimulus: int = 5
    novel_categories: tuple[str, ...] = DEFAULT_NOVEL
    novel_fraction: float = 0.05
    n_text_scenes: int = 0  # text-only scenes naming the novel categories (no brain data; LM vocabulary)
    atlas_parcels: int = 100
    stimulus_chunk: int = 512  # stimuli per block when writing the clean responses
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)


def validate_config(cfg: TaskWorldConfig) -> None:
    """Raise InputError naming the first unusable config field."""

    def need(ok: bool, name: str, problem: str) -> None:
        if not ok:
            raise InputError("config", name, problem)

    need(cfg.n_stimuli >= 2, "n_stimuli", f"{cfg.n_stimuli}: need at least 2 stimuli")
    need(1 <= cfg.n_subjects <= np.iinfo(np.int16).max, "n_subjects", f"{cfg.n_subjects} is not in 1..32767")
    need(1 <= cfg.n_repeats <= np.iinfo(np.int8).max, "n_repeats", f"{cfg.n_repeats} is not in 1..127")
    need(
        cfg.trials_per_session >= 2,
        "trials_per_session",
        f"{cfg.trials_per_session}: z-scoring needs ≥ 2 trials",
    )
    need(
        1 <= cfg.captions_per_stimulus <= len(TEMPLATES),
        "captions_per_stimulus",
        f"{cfg.captions_per_stimulus} is not in 1..{len(TEMPLATES)}",
    )
    need(cfg.stimulus_chunk >= 1, "stimulus_chunk", f"{cfg.stimulus_chunk} < 1")
    need(isinstance(cfg.n_text_scenes, int) and cfg.n_text_scenes >= 0, "n_text_scenes",
         f"{cfg.n_text_scenes!r} must be an integer >= 0")
    novel = check_novel(cfg.novel_categories)
    need(0.0 <= cfg.novel_fraction < 1.0, "novel_fraction", f"{cfg.novel_fraction} is not in [0, 1)")
    n_novel = int(round(cfg.n_stimuli * cfg.novel_fraction))
    need(
        not novel or n_novel >= len(novel),
        "novel_fraction",
        f"{n_novel} novel stimuli for {len(novel)} novel categories: raise novel_fraction or n_stimuli",
    )
    enc = cfg.encoding
    for name in (
        "ncsnr_visual",
        "ncsnr_ventral",
        "ncsnr_dorsal",
        "ncsnr_somatomotor",
        "ncsnr_other",
        "subject_snr_spread",
        "patch_jitter_mm",
    ):
        need(getattr(enc, name) >= 0, f"encoding.{name}", f"{getattr(enc, name)} < 0")
    for name in ("subject_deviation", "noise_correlated_share"):
        need(0.0 <= getattr(enc, name) <= 1.0, f"encoding.{name}", f"{getattr(enc, name)} is not in [0, 1]")
    need(enc.patch_sigma_mm > 0, "encoding.patch_sigma_mm", f"{enc.patch_sigma_mm} ≤ 0")
    need(enc.noise_rank >= 1, "encoding.noise_rank", f"{enc.noise_rank} < 1")
    for name in ("map_smoothing_steps", "noise_smoothing_steps"):
        need(getattr(enc, name) >= 0, f"encoding.{name}", f"{getattr(enc, name)} < 0")
    need(cfg.localizer.n_runs >= 1, "localizer.n_runs", f"{cfg.localizer.n_runs} < 1")
    need(cfg.localizer.noise_scale >= 0, "localizer.noise_scale", f"{cfg.localizer.noise_scale} < 0")


def _rng(seed: int, purpose: str, *ids: int) -> np.random.Generator:
    """The world's stream for `purpose` (``task_world.<purpose>`` in :data:`fmrilm.seeds.STREAMS`)."""
    return stream(seed, f"task_world.{purpose}", *ids)


def trial_schedule(
    n_stimuli: int, n_repeats: int, trials_per_session: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """One subject's presentation order.

    Returns the stimulus of each trial, its repeat index (k-th presentation of that stimulus) and
    the trial positions of each session (near-equal sessions of about `trials_per_session`).
    """
    stimulus = rng.permutation(np.repeat(np.arange(n_stimuli), n_repeats))
    repeat = np.empty_like(stimulus)
    # After a stable sort by stimulus each stimulus occupies n_repeats consecutive slots in time order.
    repeat[np.argsort(stimulus, kind="stable")] = np.tile(np.arange(n_repeats), n_stimuli)
    n_sessions = max(1, int(round(stimulus.size / trials_per_session)))
    return stimulus, repeat, np.array_split(np.arange(stimulus.size), n_sessions)


def generate_task_world(cfg: TaskWorldConfig, out: str | Path, overwrite: bool = False) -> Path:
    """Generate a synthetic task dataset directory at `out` and return its path.

    Parameters
    ----------
    cfg : TaskWorldConfig
    out : path
        Dataset directory; replaced only if `overwrite` (and only once the new one is complete).
    overwrite : bool
    """
    validate_config(cfg)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(out, "out", "already exists (pass --force / overwrite=True to replace it)")
    atlas = Atlas.schaefer(cfg.atlas_parcels)
    novel = tuple(cfg.novel_categories)
    stimuli = make_stimuli(
        cfg.n_stimuli, _rng(cfg.seed, "scenes"), novel, cfg.novel_fraction, cfg.captions_per_stimulus
    )
    embeddings = embed_texts([s["captions"][0] for s in stimuli])
    features, feature_names = stimulus_features(stimuli, embeddings)
    group = GroupModel(atlas, features, feature_names, cfg.encoding, _rng(cfg.seed, "group"))
    noise = NoiseModel(atlas, group.op, cfg.encoding, _rng(cfg.seed, "noise_basis"))
    schedules = [
        trial_schedule(cfg.n_stimuli, cfg.n_repeats, cfg.trials_per_session, _rng(cfg.seed, "schedule", s))
        for s in range(cfg.n_subjects)
    ]

    with DatasetWriter(out, "task", atlas.describe(), cfg, cfg.seed, overwrite=overwrite) as writer:
        writer.write_table("stimuli", stimuli)
        writer.write_table("text_scenes", make_text_scenes(
            cfg.n_text_scenes, _rng(cfg.seed, "text_scenes"), novel, cfg.captions_per_stimulus,
            exclude={c for s in stimuli for c in s["captions"]}))
        writer.write_array("features", features)
        # The correlated part of the noise, so an ideal observer can use the full covariance.
        writer.write_array("noise_basis", noise.basis)
        arrays = _create_arrays(writer, cfg, atlas.n_vertices, features.shape[1])
        subjects, loc_rows, centres = [], [], {}
        blocks = -(-cfg.n_stimuli // cfg.stimulus_chunk)
        with tqdm(total=sum(len(sched[2]) + blocks + 1 for sched in schedules), desc="task world") as bar:
            for s, schedule in enumerate(schedules):
                model = group.subject(_rng(cfg.seed, "subject", s))
                name = f"sub-{s + 1:02d}"
                subjects.append({"subject": name, "snr_gain": round(model.snr_gain, 4)})
                centres[name] = model.patch_centres
                _write_subject(arrays, s, model, schedule, features, noise, cfg, bar)
                betas, rows = simulate_localizer(
                    model.patches,
                    group.regions["visual"],
                    noise,
                    cfg.localizer,
                    _rng(cfg.seed, "localizer", s),
                )
                arrays["localizer_betas"][s * len(rows) : (s + 1) * len(rows)] = betas
                loc_rows += [{"subject": s, **row} for row in rows]
                bar.update()
        writer.write_table("subjects", subjects)
        writer.write_table("localizer", loc_rows)
        writer.write_json(
            "encoding",
            {
                "feature_names": feature_names,
                "patch_categories": list(PATCH_CATEGORIES),
                "patch_centres": centres,
                "clean_formula": "clean[s] = features @ weights[s]",
                "noise_ceiling_trials_averaged": 1,
                "noise_formula": "noise_raw = z @ noise_basis + noise_independent_sd * e; z, e standard "
                "normal; betas ≈ (clean_raw + noise_raw) * noise_sd",
                "noise_independent_sd": float(noise.independent_sd),
            },
        )
        writer.write_json(
            "categories",
            {
                c: {"supercategory": sup, "synonyms": CATEGORY_SYNONYMS[c]}
                for c, (_, sup, *_) in CATEGORIES.items()
            },
        )
        return writer.finish(
            n_stimuli=cfg.n_stimuli,
            n_subjects=cfg.n_subjects,
            n_trials=len(arrays["betas"]),
            novel_categories=list(novel),
            source="synthetic",
            localizer_categories=list(LOCALIZER_CATEGORIES),
        )


def _create_arrays(writer: DatasetWriter, cfg: TaskWorldConfig, n_vertices: int, n_features: int) -> dict:
    """The dataset's memmaps, to be filled subject by subject."""
    S, M, V = cfg.n_subjects, cfg.n_stimuli, n_vertices
    n_trials = S * M * cfg.n_repeats
    shapes = {
        "betas": ((n_trials, V), "float32"),
        "trial_stimulus": ((n_trials,), "int32"),
        "trial_subject": ((n_trials,), "int16"),
        "trial_session": ((n_trials,), "int16"),
        "trial_repeat": ((n_trials,), "int8"),
        "clean": ((S, M, V), "float32"),
        "weights": ((S, n_features, V), "float32"),
        "noise_ceiling": ((S, V), "float32"),
        "ncsnr": ((S, V), "float32"),
        "noise_sd": ((S, V), "float32"),
        "patch_maps": ((S, len(PATCH_CATEGORIES), V), "float32"),
        "localizer_betas": ((S * len(LOCALIZER_CATEGORIES) * cfg.localizer.n_runs, V), "float32"),
    }
    return {name: writer.create_array(name, shape, dtype) for name, (shape, dtype) in shapes.items()}


def _write_subject(
    arrays: dict,
    s: int,
    model: SubjectModel,
    schedule: tuple[np.ndarray, np.ndarray, list[np.ndarray]],
    features: np.ndarray,
    noise: NoiseModel,
    cfg: TaskWorldConfig,
    bar: tqdm,
) -> None:
    """Fill subject `s`'s ground truth, clean responses and single trials (one session at a time)."""
    stim, repeat, sessions = schedule
    weights = model.weights
    arrays["weights"][s] = weights
    arrays["noise_ceiling"][s] = model.noise_ceiling(1)
    arrays["ncsnr"][s] = model.ncsnr
    arrays["noise_sd"][s] = model.noise_sd
    arrays["patch_maps"][s] = model.patches
    for start in range(0, len(features), cfg.stimulus_chunk):
        arrays["clean"][s, start : start + cfg.stimulus_chunk] = (
            features[start : start + cfg.stimulus_chunk] @ weights
        )
        bar.update()
    offset = s * stim.size
    arrays["trial_stimulus"][offset : offset + stim.size] = stim
    arrays["trial_subject"][offset : offset + stim.size] = s
    arrays["trial_repeat"][offset : offset + stim.size] = repeat
    for k, trials in enumerate(sessions):
        raw = features[stim[trials]] @ model.weights_raw
        raw += noise.sample(trials.size, _rng(cfg.seed, "trial_noise", s, k))
        # NSD convention: z-score every vertex within each (subject, session).
        raw -= raw.mean(0)
        raw /= raw.std(0)
        arrays["betas"][offset + trials] = raw
        arrays["trial_session"][offset + trials] = k
        bar.update()
    # Hand this subject's pages to the kernel for writeback, so dirty memory stays bounded at NSD scale.
    for array in arrays.values():
        array.flush()
