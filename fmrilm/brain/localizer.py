"""fLoc-style functional localizer runs: independent data that finds category-selective vertices.

Each run shows blocks of five categories (faces, bodies, places, words, objects); a run yields
one beta map per category. Every category drives visual cortex in general; faces, bodies,
places and words additionally drive their patch (from the subject's encoding model); objects
drive only the general visual response, so it serves as a baseline condition. Noise is drawn
from the same spatially correlated model as the task but with separate seeds, so localizer and
task data are statistically independent (no double dipping when stimulation experiments pick
vertices from the localizer).

Betas are in units of the single-trial noise sd. Use :func:`localizer_contrast` for
"category vs the rest, averaged over runs" and :func:`top_vertices` to pick a functional ROI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmrilm.brain.encoding_model import PATCH_CATEGORIES, NoiseModel
from fmrilm.errors import InputError

LOCALIZER_CATEGORIES = ("faces", "bodies", "places", "words", "objects")


@dataclass
class LocalizerConfig:
    """Runs per subject, patch response amplitude and general visual response (noise-sd units)."""

    n_runs: int = 4
    amplitude: float = 3.0
    visual_response: float = 1.0
    # Each localizer beta averages many trials of a block design, so its noise is below a single trial's.
    noise_scale: float = 0.7


def simulate_localizer(
    patches: np.ndarray, visual: np.ndarray, noise: NoiseModel, cfg: LocalizerConfig, rng: np.random.Generator
) -> tuple[np.ndarray, list[dict]]:
    """One subject's localizer betas.

    Parameters
    ----------
    patches : ndarray (len(PATCH_CATEGORIES), V)
        The subject's category patch maps (0..1).
    visual : ndarray (V,)
        General visual responsiveness (0..1).
    noise : NoiseModel
    cfg : LocalizerConfig
    rng : numpy.random.Generator
        Dedicated to the localizer (independent of the task trials).

    Returns
    -------
    betas : ndarray float32 (n_runs * 5, V)
        Run-major: all categories of run 0, then run 1, ...
    rows : list of dict
        ``{"run": r, "category": c}`` per beta (the caller adds the subject).
    """
    means = []
    for cat in LOCALIZER_CATEGORIES:
        drive = patches[PATCH_CATEGORIES.index(cat)] if cat in PATCH_CATEGORIES else 0.0
        means.append(cfg.visual_response * visual + cfg.amplitude * drive)
    means = np.asarray(means, np.float32)
    betas, rows = [], []
    for run in range(cfg.n_runs):
        betas.append(means + cfg.noise_scale * noise.sample(len(LOCALIZER_CATEGORIES), rng))
        rows += [{"run": run, "category": cat} for cat in LOCALIZER_CATEGORIES]
    return np.concatenate(betas).astype(np.float32), rows


def localizer_contrast(betas: np.ndarray, categories, target: str) -> np.ndarray:
    """Mean beta of `target` minus the mean over all other categories, across runs: (V,)."""
    categories = np.asarray(list(categories))
    if target not in set(categories):
        raise InputError("localizer", "category", f"{target!r} not among {sorted(set(categories))}")
    betas = np.asarray(betas, np.float32)
    return betas[categories == target].mean(0) - betas[categories != target].mean(0)


def top_vertices(contrast: np.ndarray, n: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Indices of the `n` vertices with the largest contrast (only within boolean `mask` if given),
    strongest first."""
    values = np.where(mask, contrast, -np.inf) if mask is not None else np.asarray(contrast)
    order = np.argsort(-values, kind="stable")
    return order[: int(n)]
