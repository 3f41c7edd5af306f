"""Vertex-wise encoding model of the synthetic task world, with known ground truth.

Each subject's response to stimulus *m* at fsaverage5 vertex *v* is linear in stimulus features::

    clean[s, m, v] = features[m] @ weights[s, :, v]          (z-units: the betas' scale)
    beta = z-score_session(clean_raw + noise)                 (single trial)

Features (``feature_names``; every column standardised over the stimuli):

- ``sem_000..sem_383``: MiniLM embedding of the canonical caption (semantic content);
- ``cat_faces, cat_bodies, cat_places, cat_food, cat_words``: category drive of the selective patches;
- ``low_*``: object count, number of objects, size, colourfulness and one column per colour word.

Weights mix three blocks per vertex: smooth random semantic maps (spatially smooth fields, from
a few steps of neighbour averaging on the mesh) dominate visual and ventral temporal cortex;
gaussian category patches (FFA, EBA, PPA, ventral food area, left VWFA, radius a few cm, around
the vertex nearest the usual MNI coordinate, jittered per subject) load on their category
feature; low-level features load on early visual cortex. Subjects share group maps plus
individual smooth deviations. Each vertex's weights are then scaled so the signal sd equals a
target noise-ceiling SNR map (NSD-like: high in visual cortex, low in somatomotor cortex).

Noise is spatially correlated (a share from a smooth low-rank basis, the rest independent) with
unit variance in raw units. The NSD noise ceiling follows from the known variances:
``ncsnr = sd_signal / sd_noise`` and ``NC = 100 ncsnr² / (ncsnr² + 1 / n_averaged)``.

Ground-truth arrays written to a synthetic task dataset: ``features`` [M, F], ``weights``
[S, F, V], ``noise_sd`` [S, V] (z-units), ``ncsnr`` [S, V], ``noise_ceiling`` [S, V] (single
trial, %), ``patch_maps`` [S, 5, V], ``noise_basis`` [R, V] (:class:`NoiseModel`'s ``basis``, raw
units, shared by the subjects); ``encoding.json`` holds feature names, patch centres and the
noise's ``noise_independent_sd``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fmrilm.brain.atlas import Atlas
from fmrilm.brain.scenes import COLOURS
from fmrilm.errors import InputError

PATCH_CATEGORIES = ("faces", "bodies", "places", "food", "words")
# Usual MNI locations of the category-selective patches (both hemispheres; VWFA is left-lateralised).
PATCH_CENTRES_MNI = {
    "faces": ((-40, -55, -20), (40, -55, -20)),  # FFA, fusiform
    "bodies": ((-45, -70, 0), (45, -70, 0)),  # EBA, lateral occipitotemporal
    "places": ((-25, -45, -10), (25, -45, -10)),  # PPA, parahippocampal
    "food": ((-30, -50, -15), (30, -50, -15)),  # ventral food-selective cortex
    "words": ((-45, -55, -15),),  # VWFA, left only
}
# How strongly a scene context reads as a "place" (open vistas more than interiors).
SCENE_OPENNESS = {
    "beach": 1.0,
    "ocean": 1.0,
    "field": 1.0,
    "savanna": 1.0,
    "snowy mountain": 1.0,
    "sky": 0.8,
    "street": 0.9,
    "park": 0.9,
    "airport": 0.9,
    "railway platform": 0.8,
    "tennis court": 0.7,
    "kitchen": 0.5,
    "living room": 0.5,
    "dining room": 0.5,
    "bedroom": 0.4,
    "bathroom": 0.3,
}
# Categories that carry visible text (signs, lettering on vehicles): the drive of the word area.
TEXT_CATEGORIES = {"stop sign": 1.0, "parking meter": 0.6, "bus": 0.6, "train": 0.4, "truck": 0.3}


@dataclass
class EncodingConfig:
    """Parameters of the encoding model and noise (target SNRs are ncsnr = signal sd / noise sd)."""

    ncsnr_visual: float = 0.6
    ncsnr_ventral: float = 0.75
    ncsnr_dorsal: float = 0.4
    ncsnr_somatomotor: float = 0.12
    ncsnr_other: float = 0.25
    subject_deviation: float = 0.3  # share of weight variance that is individual rather than group
    subject_snr_spread: float = 0.12  # sd of the per-subject SNR gain
    patch_sigma_mm: float = 10.0
    patch_jitter_mm: float = 3.0
    map_smoothing_steps: int = 8
    noise_smoothing_steps: int = 6
    noise_rank: int = 128
    noise_correlated_share: float = 0.6


# ----------------------------------------------------------------------------- mesh smoothing
def smoothing_operator(atlas: Atlas) -> sp.csr_matrix:
    """Row-stochastic neighbour averaging (each vertex and its mesh neighbours, equal weights)."""
    adj = (atlas.adjacency + sp.identity(atlas.n_vertices, dtype=np.float32, format="csr")).tocsr()
    return (sp.diags(1.0 / np.asarray(adj.sum(1)).ravel()) @ adj).astype(np.float32).tocsr()


def smooth(values: np.ndarray, op: sp.csr_matrix, steps: int) -> np.ndarray:
    """Apply `steps` rounds of neighbour averaging to (..., V) values."""
    flat = np.asarray(values, np.float32).reshape(-1, op.shape[0]).T
    for _ in range(steps):
        flat = op @ flat
    return np.ascontiguousarray(flat.T).reshape(np.shape(values)).astype(np.float32)


def smooth_fields(n: int, op: sp.csr_matrix, steps: int, rng: np.random.Generator) -> np.ndarray:
    """`n` spatially smooth gaussian fields (n, V), each standardised over vertices."""
    fields = smooth(rng.standard_normal((n, op.shape[0]), dtype=np.float32), op, steps)
    fields -= fields.mean(1, keepdims=True)
    return fields / fields.std(1, keepdims=True)


# ----------------------------------------------------------------------------- regions
def _soft(x: np.ndarray, width: float = 4.0) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x / width))


def region_maps(atlas: Atlas, op: sp.csr_matrix) -> dict[str, np.ndarray]:
    """Soft (0..1) vertex maps of the regions the model is built on.

    ``visual``: Vis network; ``early``: its occipital pole (y < -75 mm); ``ventral``: inferior
    temporal/fusiform cortex from coordinates; ``dorsal``: dorsal attention; ``somatomotor``.
    """
    net = np.array(["wall"] + [p.network for p in atlas.parcels])[atlas.labels]
    x, y, z = np.abs(atlas.coords[:, 0]), atlas.coords[:, 1], atlas.coords[:, 2]
    raw = {"visual": net == "Vis", "dorsal": net == "DorsAttn", "somatomotor": net == "SomMot"}
    maps = {k: smooth(v.astype(np.float32), op, 3) for k, v in raw.items()}
    maps["early"] = maps["visual"] * _soft(-75.0 - y)
    maps["ventral"] = (
        _soft(-z) * _soft(y + 85.0) * _soft(-25.0 - y) * _soft(x - 18.0) * _soft(58.0 - x)
    ).astype(np.float32) * (atlas.labels > 0)
    return maps


def target_ncsnr(
    atlas: Atlas,
    maps: dict,
    patches: np.ndarray,
    cfg: EncodingConfig,
    op: sp.csr_matrix,
    rng: np.random.Generator,
) -> np.ndarray:
    """Group SNR map: region levels, blended smoothly, ±15 % smooth variation, raised in patches."""
    level = np.full(atlas.n_vertices, cfg.ncsnr_other, np.float32)
    for region, value in (
        ("dorsal", cfg.ncsnr_dorsal),
        ("somatomotor", cfg.ncsnr_somatomotor),
        ("visual", cfg.ncsnr_visual),
        ("ventral", cfg.ncsnr_ventral),
    ):
        level += maps[region] * (value - level)
    level = smooth(level, op, 4) * (1.0 + 0.15 * np.tanh(smooth_fields(1, op, 10, rng)[0]))
    level += 0.2 * patches.max(0)
    level[atlas.labels == 0] = 0.05  # medial wall: no cortex, almost no signal
    return level.astype(np.float32)


def patch_maps(
    atlas: Atlas, sigma_mm: float, jitter_mm: float, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, list[list[float]]]]:
    """Gaussian category patches (5, V) around jittered centres snapped to the nearest cortical
    vertex of the right hemisphere; returns the maps and the snapped centres (mm)."""
    hemi = atlas.hemispheres
    cortex = atlas.labels > 0
    maps = np.zeros((len(PATCH_CATEGORIES), atlas.n_vertices), np.float32)
    centres = {}
    for i, cat in enumerate(PATCH_CATEGORIES):
        centres[cat] = []
        for mni in PATCH_CENTRES_MNI[cat]:
            side = int(mni[0] > 0)
            point = np.asarray(mni, np.float32) + rng.normal(0.0, jitter_mm, 3).astype(np.float32)
            candidates = np.flatnonzero((hemi == side) & cortex)
            centre = atlas.coords[
                candidates[np.argmin(np.linalg.norm(atlas.coords[candidates] - point, axis=1))]
            ]
            dist2 = ((atlas.coords - centre) ** 2).sum(1)
            blob = np.where(hemi == side, np.exp(-dist2 / (2 * sigma_mm**2)), 0.0) * cortex
            maps[i] = np.maximum(maps[i], blob)
            centres[cat].append([round(float(c), 2) for c in centre])
    return maps, centres


# ----------------------------------------------------------------------------- features
def stimulus_features(stimuli: list[dict], embeddings: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Standardised feature matrix (M, F) and column names from stimulus graphs and caption embeddings."""
    rows = []
    for stim in stimuli:
        objs, scene = stim["graph"]["objects"], stim["graph"]["scene"]
        counts = {
            sup: sum(o["count"] for o in objs if o["supercategory"] == sup)
            for sup in ("people", "animals", "food")
        }
        category = [
            min(counts["people"], 2),
            min(counts["people"], 2) + 0.6 * min(counts["animals"], 2),
            SCENE_OPENNESS[scene],
            min(counts["food"], 2),
            max((TEXT_CATEGORIES.get(o["category"], 0.0) for o in objs), default=0.0),
        ]
        coloured = [o["colour"] for o in objs if o["colour"]]
        low = [
            sum(o["count"] for o in objs),
            len(objs),
            np.mean([{"small": 0.0, "large": 1.0}.get(o["size"], 0.5) for o in objs]),
            len(coloured) / len(objs),
        ]
        low += [coloured.count(c) / len(objs) for c in COLOURS]
        rows.append(category + low)
    names = (
        [f"sem_{i:03d}" for i in range(embeddings.shape[1])]
        + [f"cat_{c}" for c in PATCH_CATEGORIES]
        + ["low_items", "low_objects", "low_size", "low_colourful"]
        + [f"low_{c}" for c in COLOURS]
    )
    x = np.concatenate([np.asarray(embeddings, np.float64), np.asarray(rows, np.float64)], axis=1)
    sd = x.std(0)
    x = (x - x.mean(0)) / np.where(sd > 1e-8, sd, np.inf)  # constant columns carry no signal → zero
    return x.astype(np.float32), names


# ----------------------------------------------------------------------------- weights
@dataclass
class SubjectModel:
    """One subject's ground truth: weights in raw noise units, SNR map, patches and their centres."""

    weights_raw: np.ndarray  # (F, V): signal_raw = features @ weights_raw, noise sd 1
    ncsnr: np.ndarray  # (V,)
    patches: np.ndarray  # (5, V)
    patch_centres: dict
    snr_gain: float

    @property
    def total_sd(self) -> np.ndarray:
        """Expected sd of a single-trial raw beta: what session z-scoring divides by."""
        return np.sqrt(self.ncsnr**2 + 1.0).astype(np.float32)

    @property
    def weights(self) -> np.ndarray:
        """Weights in z-units (the betas' scale): clean = features @ weights."""
        return (self.weights_raw / self.total_sd).astype(np.float32)

    @property
    def noise_sd(self) -> np.ndarray:
        """Single-trial noise sd in z-units."""
        return (1.0 / self.total_sd).astype(np.float32)

    def noise_ceiling(self, n_averaged: int = 1) -> np.ndarray:
        """NSD noise ceiling (%) for responses averaged over `n_averaged` trials."""
        return noise_ceiling_from_ncsnr(self.ncsnr, n_averaged)


def noise_ceiling_from_ncsnr(ncsnr: np.ndarray, n_averaged: int = 1) -> np.ndarray:
    """NSD formula: NC = 100 · ncsnr² / (ncsnr² + 1/n)."""
    ncsnr = np.asarray(ncsnr, np.float64)
    return (100.0 * ncsnr**2 / (ncsnr**2 + 1.0 / n_averaged)).astype(np.float32)


class GroupModel:
    """Group-level maps shared by all subjects, and the recipe that individualises them.

    Parameters
    ----------
    atlas : Atlas
    features : ndarray (M, F)
        Standardised features (from :func:`stimulus_features`).
    feature_names : list of str
    cfg : EncodingConfig
    rng : numpy.random.Generator
        Draws the group maps.
    """

    def __init__(
        self,
        atlas: Atlas,
        features: np.ndarray,
        feature_names: list[str],
        cfg: EncodingConfig,
        rng: np.random.Generator,
    ):
        self.atlas, self.cfg = atlas, cfg
        self.op = smoothing_operator(atlas)
        self.regions = region_maps(atlas, self.op)
        self.cov = (features.T.astype(np.float64) @ features / len(features)).astype(np.float32)
        self.blocks = {
            b: np.array([n.startswith(b) for n in feature_names]) for b in ("sem_", "cat_", "low_")
        }
        steps = cfg.map_smoothing_steps
        self.group_sem = smooth_fields(int(self.blocks["sem_"].sum()), self.op, steps, rng)
        self.group_low = smooth_fields(int(self.blocks["low_"].sum()), self.op, steps, rng)
        group_patches, _ = patch_maps(atlas, cfg.patch_sigma_mm, 0.0, rng)
        self.ncsnr = target_ncsnr(atlas, self.regions, group_patches, cfg, self.op, rng)

    def subject(self, rng: np.random.Generator) -> SubjectModel:
        """Individual model: group maps plus smooth deviations, jittered patches, an SNR gain."""
        cfg = self.cfg
        # float32 mixing weights keep the (F, V) maps in float32 (a float64 scalar would upcast them).
        keep = np.float32(np.sqrt(1.0 - cfg.subject_deviation))
        own = np.float32(np.sqrt(cfg.subject_deviation))
        sem, low = (
            keep * group + own * smooth_fields(len(group), self.op, cfg.map_smoothing_steps, rng)
            for group in (self.group_sem, self.group_low)
        )
        patches, centres = patch_maps(self.atlas, cfg.patch_sigma_mm, cfg.patch_jitter_mm, rng)
        # Early visual cortex follows low-level features, patches their category, the rest semantics.
        share_low = 0.1 + 0.6 * self.regions["early"]
        share_cat = np.minimum(0.85 * patches.max(0), 0.95 - share_low)
        share_sem = 1.0 - share_low - share_cat
        weights = np.zeros((len(self.cov), self.atlas.n_vertices), np.float32)
        for block, maps, share in (
            ("sem_", sem, share_sem),
            ("cat_", patches, share_cat),
            ("low_", low, share_low),
        ):
            rows = self.blocks[block]
            weights[rows] = maps * np.sqrt(share) / self._signal_sd(maps, rows)
        gain = float(np.clip(1.0 + cfg.subject_snr_spread * rng.standard_normal(), 0.7, 1.3))
        ncsnr = (self.ncsnr * gain).astype(np.float32)
        weights *= ncsnr / self._signal_sd(weights)
        return SubjectModel(weights, ncsnr, patches, centres, gain)

    def _signal_sd(self, weights: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Per-vertex sd over stimuli of features[:, rows] @ weights (exact, from the feature covariance)."""
        cov = self.cov if rows is None else self.cov[np.ix_(rows, rows)]
        return np.sqrt(np.maximum(((cov @ weights) * weights).sum(0), 1e-12)).astype(np.float32)


# ----------------------------------------------------------------------------- noise
class NoiseModel:
    """Spatially correlated gaussian noise with unit variance per vertex.

    A share ``rho`` comes from ``R`` smooth fields (low rank, so a trial costs one small matmul),
    the rest is independent per vertex: ``noise = z @ B + sqrt(1-rho) e`` (B scaled to variance rho),
    so its covariance is ``Bᵀ B + (1 - rho) I`` (raw units, the same for every subject and trial).
    """

    def __init__(self, atlas: Atlas, op: sp.csr_matrix, cfg: EncodingConfig, rng: np.random.Generator):
        basis = smooth(
            rng.standard_normal((cfg.noise_rank, atlas.n_vertices), dtype=np.float32),
            op,
            cfg.noise_smoothing_steps,
        )
        rho = float(cfg.noise_correlated_share)
        # Columns scaled once so that z @ basis has variance rho at every vertex (z standard normal);
        # all scales are folded in here so sampling stays in float32 with a single matmul.
        scale = np.sqrt(rho / (basis**2).sum(0, keepdims=True))
        self.basis = (basis * scale).astype(np.float32)
        self.independent_sd = np.float32(np.sqrt(1.0 - rho))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` noise maps (n, V), float32, unit variance per vertex."""
        rank, n_vertices = self.basis.shape
        noise = rng.standard_normal((n, n_vertices), dtype=np.float32)
        noise *= self.independent_sd
        noise += rng.standard_normal((n, rank), dtype=np.float32) @ self.basis
        return noise


def estimate_ncsnr(betas: np.ndarray, trial_stimulus: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """NSD-style ncsnr estimated from repeated single trials (stimuli with ≥ 2 repeats).

    ``var_noise`` = mean over stimuli of the across-repeat variance (ddof 1); ``var_signal`` =
    total variance of those trials minus ``var_noise``; ``ncsnr = sqrt(max(var_signal, 0)) / sd_noise``.
    Processed in vertex chunks so memory-mapped betas are never loaded whole.
    """
    stim = np.asarray(trial_stimulus)
    _, inverse, counts = np.unique(stim, return_inverse=True, return_counts=True)
    repeated = np.flatnonzero(counts[inverse] >= 2)
    if repeated.size == 0:
        raise InputError(
            "betas", "trial_stimulus", "no stimulus is repeated: the noise ceiling needs repeats"
        )
    order = repeated[np.argsort(inverse[repeated], kind="stable")]  # trials grouped by stimulus
    n = counts[counts >= 2].astype(np.float64)[:, None]
    starts = np.concatenate([[0], np.cumsum(n[:-1, 0])]).astype(np.int64)
    out = np.zeros(betas.shape[1], np.float32)
    for start in range(0, betas.shape[1], chunk):
        block = np.asarray(betas[:, start : start + chunk], np.float64)[order]
        sums = np.add.reduceat(block, starts, axis=0)
        squares = np.add.reduceat(block**2, starts, axis=0)
        var_noise = ((squares - sums**2 / n) / (n - 1)).mean(0)
        var_signal = block.var(0) - var_noise
        out[start : start + chunk] = np.sqrt(np.maximum(var_signal, 0)) / np.sqrt(
            np.maximum(var_noise, 1e-12)
        )
    return out
