"""Synthetic UKB-like rest population: phenotypes, sites and parcel time series with known FC effects.

Every subject has an age, sex, diagnosis and site, and a resting-state run of Schaefer-100 parcel
time series (TR 2 s). The population-average FC is brainspace's real HCP group FC; phenotypes shift
named network blocks by planted amounts (the ground truth is stored in the manifest under
``"phenotype_effects"``); sites differ in noise level (which attenuates FC), per-parcel gain and
offset; time series are AR(1) (see :mod:`fmrilm.brain.rest_covariance` for why).

Subjects are generated one at a time from their own random stream (derived from the seed and the
subject index), written straight into a memory-mapped array, so a 20k-subject population needs
no more memory than one subject, and subject ``i`` is identical whatever ``n_subjects`` is.

Launch::

    fmrilm world rest --config rest_world_demo --out runs/rest_demo
    fmrilm world rest --config rest_world_demo --set n_subjects=20000 --out runs/rest_ukb

Layout (manifest kind ``"rest"``): ``timeseries`` float32 [S, T, P]; table ``subjects.jsonl``
rows ``{"subject", "age", "sex", "diagnosis", "site"}``; manifest extras ``tr``, ``n_subjects``,
``n_timepoints``, ``source="synthetic"``, ``phenotype_effects``, ``site_effects``,
``temporal_model``. Vertex-level data come from :func:`expand_to_vertices`.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fmrilm.brain.atlas import NETWORKS, Atlas
from fmrilm.brain.rest_covariance import (
    ar1_series,
    block_mask,
    hcp_group_fc,
    nearest_correlation,
    network_shift,
    wishart_correlation,
)
from fmrilm.brain.store import DatasetWriter
from fmrilm.config import from_dict
from fmrilm.errors import InputError
from fmrilm.seeds import spawned_stream

SOURCE = "rest world config"
# How each phenotype enters the FC: the planted delta is the difference between the two groups
# (coded +-0.5, so the population mean stays the group FC) or the change per 10 years of age.
PHENOTYPE_CODING = {"sex": "F minus M", "diagnosis": "patient minus control",
                    "age": "per 10 years, centred on the middle of age_range"}
# Subjects between releases of written pages (see _release_pages).
RELEASE_EVERY = 256


@dataclass
class PhenotypeEffect:
    """A planted change of FC on one network block.

    Parameters
    ----------
    phenotype : {"sex", "age", "diagnosis"}
    networks : tuple of two str
        Network names from ``fmrilm.brain.atlas.NETWORKS``; equal names mean the within-network block.
    delta : float
        Change of the correlation on every edge of the block (see ``PHENOTYPE_CODING``). Observed
        changes are smaller: a site's noise scales FC by ``1 - noise_fraction``.
    """

    phenotype: str
    networks: tuple[str, str]
    delta: float


def _default_effects() -> list[PhenotypeEffect]:
    return [PhenotypeEffect("sex", ("Default", "Default"), 0.12),
            PhenotypeEffect("age", ("SomMot", "Vis"), -0.05),
            PhenotypeEffect("diagnosis", ("Default", "Cont"), -0.12),
            PhenotypeEffect("diagnosis", ("Limbic", "Limbic"), -0.15)]


@dataclass
class RestWorldConfig:
    """Everything that defines a synthetic rest population (shipped: rest_world_demo; test size:
    tests/configs/rest_world_tiny.yaml).

    Parameters
    ----------
    seed : int
    n_subjects, n_timepoints : int
        Population size and run length in TRs.
    tr : float
        Repetition time in seconds.
    n_sites : int
    age_range : (float, float)
        Ages are uniform in this range (years).
    female_fraction, patient_fraction : float
    shrinkage : float
        Pull of the HCP group FC toward identity, in [0, 1).
    individual_network_sd : float
        SD of each subject's random shift of every network block.
    individual_dof : int
        Degrees of freedom of each subject's Wishart draw around its FC (>= 100; lower = more varied).
    ar_rho : (float, float)
        Range of the per-subject AR(1) coefficient (= lag-1 autocorrelation).
    site_noise : (float, float)
        Range of the per-site fraction of variance that is spatially independent noise.
    site_gain_sd, site_offset_sd : float
        Per-site, per-parcel log-gain SD and offset SD.
    effects : list of PhenotypeEffect
    """

    seed: int = 0
    n_subjects: int = 300
    n_timepoints: int = 160
    tr: float = 2.0
    n_sites: int = 3
    age_range: tuple[float, float] = (45.0, 80.0)
    female_fraction: float = 0.5
    patient_fraction: float = 0.3
    shrinkage: float = 0.1
    individual_network_sd: float = 0.04
    individual_dof: int = 300
    ar_rho: tuple[float, float] = (0.3, 0.6)
    site_noise: tuple[float, float] = (0.05, 0.25)
    site_gain_sd: float = 0.2
    site_offset_sd: float = 0.5
    effects: list[PhenotypeEffect] = field(default_factory=_default_effects)

    def __post_init__(self):
        # YAML gives effects as dicts; build the dataclasses here so saved configs round-trip.
        effects = []
        for i, effect in enumerate(self.effects or []):
            if isinstance(effect, dict):
                effect = from_dict(PhenotypeEffect, effect, f"{SOURCE}.effects[{i}]")
            if not isinstance(effect, PhenotypeEffect):
                raise InputError(SOURCE, f"effects[{i}]", f"expected a mapping, got {type(effect).__name__}")
            effects.append(effect)
        self.effects = effects

    def validate(self) -> None:
        """Raise InputError naming the first bad field."""
        _check_int(self.n_subjects, "n_subjects", 1)
        _check_int(self.n_timepoints, "n_timepoints", 3)
        _check_int(self.n_sites, "n_sites", 1)
        _check_int(self.individual_dof, "individual_dof", 100)
        _check_number(self.tr, "tr", low=0.0, low_open=True)
        _check_range(self.age_range, "age_range", 0.0, 150.0)
        _check_range(self.ar_rho, "ar_rho", 0.0, 0.99)
        _check_range(self.site_noise, "site_noise", 0.0, 0.99)
        for name in ("female_fraction", "patient_fraction"):
            _check_number(getattr(self, name), name, 0.0, 1.0)
        _check_number(self.shrinkage, "shrinkage", 0.0, 0.99)
        for name in ("individual_network_sd", "site_gain_sd", "site_offset_sd"):
            _check_number(getattr(self, name), name, 0.0, 10.0)
        for i, effect in enumerate(self.effects):
            where = f"effects[{i}]"
            if effect.phenotype not in PHENOTYPE_CODING:
                raise InputError(SOURCE, f"{where}.phenotype",
                                 f"{effect.phenotype!r} is not one of {sorted(PHENOTYPE_CODING)}")
            if not isinstance(effect.networks, (list, tuple)) or len(effect.networks) != 2:
                raise InputError(SOURCE, f"{where}.networks",
                                 f"expected two network names, got {effect.networks!r}")
            unknown = [n for n in effect.networks if n not in NETWORKS]
            if unknown:
                raise InputError(SOURCE, f"{where}.networks",
                                 f"unknown network(s) {unknown}; known: {list(NETWORKS)}")
            _check_number(effect.delta, f"{where}.delta", -0.5, 0.5)


def _check_number(value, name, low, high=math.inf, low_open=False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(SOURCE, name, f"expected a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        bound = f"> {low}" if low_open else f"in [{low}, {high}]"
        raise InputError(SOURCE, name, f"{value} is not {bound}")


def _check_int(value, name, low) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(SOURCE, name, f"expected an integer >= {low}, got {value!r}")


def _check_range(value, name, low, high) -> None:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError(SOURCE, name, f"expected [low, high], got {value!r}")
    for v in value:
        _check_number(v, name, low, high)
    if value[0] > value[1]:
        raise InputError(SOURCE, name, f"low {value[0]} is above high {value[1]}")


class RestPopulation:
    """The generative model of a rest population; :meth:`subject` draws subject ``i`` on demand.

    Parameters
    ----------
    cfg : RestWorldConfig
        Validated here.
    atlas : Atlas, optional
        Schaefer-100 on fsaverage5 (loaded if not given).
    """

    def __init__(self, cfg: RestWorldConfig, atlas: Atlas | None = None):
        cfg.validate()
        self.cfg = cfg
        self.atlas = atlas or Atlas.schaefer(100)
        if self.atlas.n_parcels != 100:
            raise InputError(self.atlas.name, "n_parcels", "the rest population is defined on Schaefer-100")
        self.networks = np.array([p.network for p in self.atlas.parcels])
        self.group_fc = hcp_group_fc(cfg.shrinkage)
        self.effect_masks = np.stack([block_mask(self.networks, *e.networks) for e in cfg.effects]) \
            if cfg.effects else np.zeros((0,) + self.group_fc.shape)
        self.sites = self._draw_sites()

    def _draw_sites(self) -> list[dict]:
        cfg, n_parcels = self.cfg, self.atlas.n_parcels
        rng = spawned_stream(cfg.seed, "rest_world.site")
        return [{"site": f"site-{k + 1}",
                 "noise_fraction": float(rng.uniform(*cfg.site_noise)),
                 "gain": rng.lognormal(0.0, cfg.site_gain_sd, n_parcels).astype(np.float32),
                 "offset": rng.normal(0.0, cfg.site_offset_sd, n_parcels).astype(np.float32)}
                for k in range(cfg.n_sites)]

    def phenotype_codes(self, row: dict) -> np.ndarray:
        """Amplitude of every effect for one subject row (see ``PHENOTYPE_CODING``)."""
        centre = (self.cfg.age_range[0] + self.cfg.age_range[1]) / 2
        codes = {"sex": 0.5 if row["sex"] == "F" else -0.5,
                 "diagnosis": 0.5 if row["diagnosis"] == "patient" else -0.5,
                 "age": (row["age"] - centre) / 10.0}
        return np.array([codes[e.phenotype] for e in self.cfg.effects])

    def planted_effects(self, row: dict) -> np.ndarray:
        """The FC change (P, P) the planted phenotype effects make for one subject row."""
        deltas = np.array([e.delta for e in self.cfg.effects])
        return np.tensordot(self.phenotype_codes(row) * deltas, self.effect_masks, axes=1)

    def subject_fc(self, row: dict, rng: np.random.Generator) -> np.ndarray:
        """The subject's true FC (before site noise): group FC + effects + individual variability."""
        shift = network_shift(self.networks, self.cfg.individual_network_sd, rng)
        target = nearest_correlation(self.group_fc + self.planted_effects(row) + shift)
        return wishart_correlation(target, self.cfg.individual_dof, rng)

    def subject(self, index: int) -> tuple[dict, np.ndarray]:
        """Phenotype row and float32 time series (T, P) of subject `index` (deterministic)."""
        cfg = self.cfg
        rng = spawned_stream(cfg.seed, "rest_world.subject", index)
        width = max(4, len(str(cfg.n_subjects)))
        age = round(float(rng.uniform(*cfg.age_range)), 1)
        sex = "F" if rng.random() < cfg.female_fraction else "M"
        diagnosis = "patient" if rng.random() < cfg.patient_fraction else "control"
        site = self.sites[int(rng.integers(cfg.n_sites))]
        row = {"subject": f"sub-{index + 1:0{width}d}", "age": age, "sex": sex, "diagnosis": diagnosis,
               "site": site["site"]}
        rho = float(rng.uniform(*cfg.ar_rho))
        # Site noise is independent across parcels but shares the AR(1) dynamics, so it attenuates
        # FC toward identity without changing the autocorrelation.
        noise = site["noise_fraction"]
        corr = (1.0 - noise) * self.subject_fc(row, rng) + noise * np.eye(self.atlas.n_parcels)
        series = ar1_series(corr, rho, cfg.n_timepoints, rng)
        return row, (series * site["gain"] + site["offset"]).astype(np.float32)

    def ground_truth(self) -> dict:
        """Manifest extras describing the planted effects, sites and temporal model."""
        return {"phenotype_effects": [
                    {"phenotype": e.phenotype, "networks": list(e.networks), "delta": float(e.delta),
                     "coding": PHENOTYPE_CODING[e.phenotype],
                     "n_edges": int(mask.sum() // 2)}
                    for e, mask in zip(self.cfg.effects, self.effect_masks, strict=True)],
                "site_effects": [{**s, "gain": s["gain"].tolist(), "offset": s["offset"].tolist()}
                                 for s in self.sites],
                "temporal_model": {"kind": "AR(1)", "rho_range": list(self.cfg.ar_rho)},
                "fc_source": "brainspace load_group_fc('schaefer', scale=100)"}


def generate_rest_population(cfg: RestWorldConfig, out, overwrite: bool = False) -> Path:
    """Generate the rest population dataset directory `out`, subject by subject.

    Parameters
    ----------
    cfg : RestWorldConfig
    out : path
        Dataset directory to create (kind ``"rest"``).
    overwrite : bool
        Replace an existing directory (only once the new one is complete).

    Returns
    -------
    Path
        The finished dataset directory.
    """
    population = RestPopulation(cfg)
    atlas = population.atlas
    with DatasetWriter(out, "rest", atlas.describe(), cfg, cfg.seed, overwrite=overwrite) as writer:
        timeseries = writer.create_array("timeseries", (cfg.n_subjects, cfg.n_timepoints, atlas.n_parcels))
        rows = []
        for index in tqdm(range(cfg.n_subjects), desc="rest subjects", unit="subj"):
            row, timeseries[index] = population.subject(index)
            rows.append(row)
            if (index + 1) % RELEASE_EVERY == 0:
                _release_pages(timeseries)
        writer.write_table("subjects", rows)
        return writer.finish(tr=float(cfg.tr), n_subjects=cfg.n_subjects, n_timepoints=cfg.n_timepoints,
                             n_parcels=atlas.n_parcels, source="synthetic",
                             **population.ground_truth())


def _release_pages(array: np.memmap) -> None:
    """Write a memmap's dirty pages to its file and drop them from this process's resident memory.

    Written pages of a shared file mapping otherwise stay resident and count against the process,
    so a UKB-scale population would grow to the size of its file; after the flush they are clean and
    the data lives on in the file.
    """
    array.flush()
    if isinstance(array.base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        array.base.madvise(mmap.MADV_DONTNEED)


def expand_to_vertices(timeseries: np.ndarray, atlas: Atlas, seed: int, subject_index: int, *,
                       loading_sd: float = 0.3, smoothing_steps: int = 4,
                       noise_sd: float = 0.1) -> np.ndarray:
    """Spread parcel time series onto the parcels' vertices: smooth positive loadings plus vertex noise.

    Each vertex carries its parcel's signal times a loading; loadings are a spatially smoothed random
    field, exponentiated (always positive) and normalised to mean 1 within each parcel, so
    ``atlas.parcellate`` of the result returns the parcel signal up to the averaged vertex noise.

    Parameters
    ----------
    timeseries : ndarray, shape (T, P)
    atlas : Atlas
    seed, subject_index : int
        Together they fix the loadings and the noise (deterministic).
    loading_sd : float
        Spread of log-loadings within a parcel.
    smoothing_steps : int
        Neighbour-averaging passes over the mesh (larger = smoother loadings).
    noise_sd : float
        SD of independent vertex noise, in the units of `timeseries`.

    Returns
    -------
    ndarray, shape (T, V), float32; medial-wall vertices are 0.
    """
    timeseries = np.asarray(timeseries, np.float32)
    if timeseries.ndim != 2 or timeseries.shape[1] != atlas.n_parcels:
        raise InputError("expand_to_vertices", "timeseries",
                         f"shape {timeseries.shape}, expected (T, {atlas.n_parcels})")
    rng = spawned_stream(seed, "rest_world.vertex", subject_index)
    topography = rng.standard_normal(atlas.n_vertices)
    neighbours = atlas.adjacency
    degree = np.asarray(neighbours.sum(1)).ravel() + 1.0
    for _ in range(smoothing_steps):
        topography = (neighbours @ topography + topography) / degree
    grouped, mask = atlas.group(topography)
    count = mask.sum(-1, keepdims=True)
    mean = grouped.sum(-1, keepdims=True) / count
    std = np.sqrt((((grouped - mean) * mask) ** 2).sum(-1, keepdims=True) / count)
    loading = np.exp(loading_sd * (grouped - mean) / np.maximum(std, 1e-8)) * mask
    loading = atlas.ungroup(loading / (loading.sum(-1, keepdims=True) / count)).astype(np.float32)

    inside = atlas.labels > 0
    out = np.zeros((timeseries.shape[0], atlas.n_vertices), np.float32)
    out[:, inside] = timeseries[:, atlas.labels[inside] - 1] * loading[inside]
    out[:, inside] += noise_sd * rng.standard_normal((timeseries.shape[0], int(inside.sum())), np.float32)
    return out
