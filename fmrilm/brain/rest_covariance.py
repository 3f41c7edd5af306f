"""Covariance and time-series building blocks of the synthetic rest population.

The population's average functional connectivity (FC) is brainspace's real HCP group FC for
Schaefer-100 (Vos de Wael et al., 2018), pulled toward the identity and projected onto the valid
correlation matrices. Each subject's FC is that matrix plus planted phenotype effects on named
network blocks, plus individual variability (random network-block shifts and a Wishart draw), and
its time series is a first-order autoregressive process whose innovations carry that FC.

Why AR(1) and not a 1/f spectrum: with one coefficient shared by all parcels, the stationary
lag-0 covariance of an AR(1) process equals the innovation covariance exactly, so the FC we plant
is the FC an analysis recovers, and the lag-1 autocorrelation is the coefficient itself (resting
BOLD at TR 2 s has lag-1 autocorrelation of roughly 0.3-0.6). A 1/f process needs a long spectral
synthesis per subject and has no closed-form lag-1 value to test against.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from fmrilm.brain.atlas import NETWORKS

# Floor for eigenvalues when projecting onto correlation matrices: keeps Cholesky stable.
MIN_EIGENVALUE = 1e-3


def nearest_correlation(matrix: np.ndarray, min_eigenvalue: float = MIN_EIGENVALUE) -> np.ndarray:
    """Project a symmetric matrix onto positive-definite matrices with unit diagonal.

    Eigenvalues are clipped at `min_eigenvalue`, then the result is rescaled to unit diagonal
    (one clip-and-rescale step; exact when the input is already a correlation matrix).

    Parameters
    ----------
    matrix : ndarray, shape (P, P)
    min_eigenvalue : float

    Returns
    -------
    ndarray, shape (P, P), float64
    """
    sym = (np.asarray(matrix, np.float64) + np.asarray(matrix, np.float64).T) / 2
    values, vectors = np.linalg.eigh(sym)
    if values[0] < min_eigenvalue:
        sym = (vectors * np.maximum(values, min_eigenvalue)) @ vectors.T
    scale = 1.0 / np.sqrt(np.diag(sym))
    corr = sym * scale[:, None] * scale[None, :]
    np.fill_diagonal(corr, 1.0)
    return corr


def hcp_group_fc(shrinkage: float) -> np.ndarray:
    """Brainspace's HCP group FC for Schaefer-100, shrunk toward identity by `shrinkage` in [0, 1).

    Rows follow the Schaefer-100 label order, the same order as ``Atlas.schaefer(100).parcels``.
    """
    from brainspace.datasets import load_group_fc

    fc = np.asarray(load_group_fc("schaefer", scale=100), np.float64)
    return nearest_correlation((1.0 - shrinkage) * fc + shrinkage * np.eye(fc.shape[0]))


def block_mask(networks: np.ndarray, first: str, second: str) -> np.ndarray:
    """Symmetric 0/1 mask (P, P) of the edges between two networks (within one if equal), diagonal 0.

    Parameters
    ----------
    networks : ndarray of str, shape (P,)
        Network of each parcel.
    first, second : str
        Network names from ``fmrilm.brain.atlas.NETWORKS``.
    """
    a, b = networks == first, networks == second
    mask = (np.outer(a, b) | np.outer(b, a)).astype(np.float64)
    np.fill_diagonal(mask, 0.0)
    return mask


def block_mean(fc: np.ndarray, networks: np.ndarray, first: str, second: str) -> np.ndarray:
    """Mean FC over the edges of a network block, for one (P, P) matrix or a stack (..., P, P)."""
    mask = block_mask(networks, first, second).astype(bool)
    return np.asarray(fc)[..., mask].mean(-1)


def network_shift(networks: np.ndarray, sd: float, rng: np.random.Generator) -> np.ndarray:
    """Random symmetric shift of every network block (one normal draw per network pair), diagonal 0.

    Individual FC differs from the group mostly at the scale of whole networks, so this is the
    subject-level variability the phenotype effects must be detected against.
    """
    index = np.array([NETWORKS.index(n) for n in networks])
    pairs = rng.normal(0.0, sd, (len(NETWORKS), len(NETWORKS)))
    pairs = np.triu(pairs) + np.triu(pairs, 1).T
    shift = pairs[index[:, None], index[None, :]]
    np.fill_diagonal(shift, 0.0)
    return shift


def wishart_correlation(target: np.ndarray, dof: int, rng: np.random.Generator) -> np.ndarray:
    """Correlation of `dof` Gaussian draws with correlation `target`: edge-level individual variability.

    A Wishart draw is positive definite by construction (for dof >= P), so no projection is needed;
    the spread of an edge around its target r is about (1 - r**2) / sqrt(dof).
    """
    chol = np.linalg.cholesky(target)
    draws = rng.standard_normal((dof, target.shape[0])) @ chol.T
    cov = draws.T @ draws
    scale = 1.0 / np.sqrt(np.diag(cov))
    return cov * scale[:, None] * scale[None, :]


def ar1_series(corr: np.ndarray, rho: float, n_timepoints: int, rng: np.random.Generator) -> np.ndarray:
    """Stationary AR(1) time series (T, P) with lag-0 correlation `corr` and lag-1 autocorrelation `rho`.

    ``z[t] = rho * z[t-1] + sqrt(1 - rho**2) * e[t]`` with ``e[t] ~ N(0, corr)`` and the start drawn
    from the stationary distribution, so every time point has covariance exactly `corr`.
    """
    chol = np.linalg.cholesky(corr)
    innovations = rng.standard_normal((n_timepoints, corr.shape[0])) @ chol.T
    start = rng.standard_normal(corr.shape[0]) @ chol.T
    # lfilter's initial state is added to the first output: rho * z[-1] makes z[0] stationary.
    series, _ = lfilter([np.sqrt(1.0 - rho**2)], [1.0, -rho], innovations, axis=0,
                        zi=(rho * start)[None, :])
    return series


def fisher_fc(timeseries: np.ndarray) -> np.ndarray:
    """Fisher-z FC (P, P) of a (T, P) run, zero diagonal."""
    r = np.corrcoef(np.asarray(timeseries, np.float64).T)
    # |r| = 1 only on the diagonal or for duplicated parcels; clip keeps arctanh finite
    z = np.arctanh(np.clip(r, -0.999999, 0.999999))
    np.fill_diagonal(z, 0.0)
    return z


def fc_edges(timeseries: np.ndarray) -> np.ndarray:
    """The upper triangle of :func:`fisher_fc`: P·(P−1)/2 edges of one (T, P) run."""
    return fisher_fc(timeseries)[np.triu_indices(np.shape(timeseries)[1], k=1)]
