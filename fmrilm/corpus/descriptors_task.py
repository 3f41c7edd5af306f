"""Descriptors of one task scan: what a neuroscientist would say about an activation map.

Input is one value per parcel (mean beta over the parcel's vertices, ``Atlas.parcellate``).
The descriptor holds exact numbers; :mod:`fmrilm.corpus.phrasing` renders them to text.

Definitions
-----------
network mean
    Mean parcel value over the parcels of each of the 7 Yeo networks.
top parcels
    The `top_k` parcels with the largest values (ties broken by parcel order).
lateralisation index
    ``LI = (L - R) / (L + R)`` with L, R the sums of the *positive* parcel values in the left and right
    hemisphere (the usual positive-activation LI); 0 when nothing is positive. +1 = fully left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmrilm.brain.atlas import NETWORKS, Atlas
from fmrilm.errors import InputError, check_finite


@dataclass(frozen=True)
class TopParcel:
    """One of the most active parcels."""

    name: str
    hemisphere: str
    network: str
    value: float


@dataclass(frozen=True)
class TaskDescriptor:
    """Exact figures describing one task scan.

    Attributes
    ----------
    network_means : dict of str to float
        Mean parcel value per network, in ``NETWORKS`` order.
    top_parcels : tuple of TopParcel
        Most active parcels, strongest first.
    lateralisation : float
        Positive-activation lateralisation index in [-1, 1].
    """

    network_means: dict
    top_parcels: tuple
    lateralisation: float


def network_index(atlas: Atlas) -> np.ndarray:
    """Network number (index into ``NETWORKS``) of each parcel, shape (P,)."""
    return np.array([NETWORKS.index(p.network) for p in atlas.parcels])


def network_means(parcel_values: np.ndarray, atlas: Atlas) -> np.ndarray:
    """Mean over each network's parcels: (..., P) → (..., 7)."""
    nets = network_index(atlas)
    return np.stack([parcel_values[..., nets == n].mean(-1) for n in range(len(NETWORKS))], axis=-1)


def lateralisation_index(parcel_values: np.ndarray, atlas: Atlas) -> float:
    """Positive-activation lateralisation index ``(L - R) / (L + R)`` (0 when nothing is positive)."""
    left = np.array([p.hemisphere == "LH" for p in atlas.parcels])
    positive = np.clip(parcel_values, 0.0, None)
    total_left, total_right = float(positive[left].sum()), float(positive[~left].sum())
    if total_left + total_right == 0.0:
        return 0.0
    return (total_left - total_right) / (total_left + total_right)


def describe_task_scan(parcel_values: np.ndarray, atlas: Atlas, top_k: int = 3,
                       source: str = "task scan") -> TaskDescriptor:
    """Descriptor of one scan from its per-parcel values.

    Parameters
    ----------
    parcel_values : ndarray, shape (P,)
        One value per parcel (e.g. ``atlas.parcellate(betas[i])``).
    atlas : Atlas
    top_k : int
        How many of the most active parcels to name.
    source : str
        Names the scan in error messages.
    """
    values = np.asarray(parcel_values, np.float64)
    if values.shape != (atlas.n_parcels,):
        raise InputError(source, "parcel_values", f"shape {values.shape}, atlas {atlas.name} has "
                         f"{atlas.n_parcels} parcels")
    check_finite(values, source, "parcel_values")
    # stable sort on the negated values: equal values keep parcel order, so ties are deterministic
    order = np.argsort(-values, kind="stable")[:top_k]
    top = tuple(TopParcel(atlas.parcels[i].name, atlas.parcels[i].hemisphere, atlas.parcels[i].network,
                          float(values[i])) for i in order)
    means = network_means(values, atlas)
    return TaskDescriptor(network_means={net: float(m) for net, m in zip(NETWORKS, means, strict=True)},
                          top_parcels=top, lateralisation=lateralisation_index(values, atlas))
