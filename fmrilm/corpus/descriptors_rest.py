"""Descriptors of resting-state runs, z-scored against the population they come from.

For each subject's parcel time series ``[T, P]`` (fMRI-LM's descriptive corpus):

network FC
    Pearson FC between parcels, Fisher z (``arctanh``). Within-network FC of a network is the mean
    over its distinct parcel pairs; between-network FC of two networks the mean over all cross pairs.
graph metrics
    On the binary graph of the strongest ``density`` fraction of positive edges: global efficiency
    (mean of 1/shortest path over ordered pairs, 0 for unreachable pairs) and mean clustering
    coefficient (triangles / possible triangles per node, 0 below degree 2); and the modularity Q of
    the 7-network partition on the same edges weighted by their Fisher z.
functional gradients
    Diffusion-map gradients of the FC (brainspace ``GradientMaps``, normalized-angle kernel),
    Procrustes-aligned to the gradients of the population mean FC, whose principal gradient is
    oriented so the visual network sits at its low end. Reported: range of the principal gradient,
    the networks at its two ends (lowest and highest network mean) and the share of the leading
    eigenvalue among the computed ones.
amplitude
    Amplitude spectrum ``a(f) = 2 |rfft(x - mean x)| / T``; ALFF = mean ``a`` over ``band`` (Hz),
    fALFF = sum of ``a`` in ``band`` / sum over all frequencies above 0.
temporal autocorrelation
    Lag-1 Pearson autocorrelation per parcel.

Every scalar is also z-scored across the subjects of the population (mean and sample std); with fewer
than :data:`MIN_POPULATION` subjects there is no reference and the z-scores are NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.sparse.csgraph import shortest_path
from tqdm import tqdm

from fmrilm.brain.atlas import NETWORKS, Atlas
from fmrilm.brain.rest_covariance import fisher_fc
from fmrilm.corpus.descriptors_task import network_index, network_means
from fmrilm.errors import InputError, check_finite

MIN_POPULATION = 3
GRAPH_METRICS = ("efficiency", "clustering", "modularity")


@dataclass
class RestDescriptorConfig:
    """Settings of the rest descriptors.

    Attributes
    ----------
    min_timepoints : int
        Shortest run (TRs) for which FC is estimated; runs must also span one full period of the
        lowest ALFF frequency.
    band : tuple of float
        ALFF frequency band in Hz.
    density : float
        Fraction of the strongest positive edges kept for the graph metrics.
    n_gradients : int
        Diffusion-map components computed (the principal one is described).
    """

    min_timepoints: int = 60
    band: tuple[float, float] = (0.01, 0.08)
    density: float = 0.1
    n_gradients: int = 3


def required_timepoints(tr: float, cfg: RestDescriptorConfig) -> int:
    """Fewest TRs a run needs: `min_timepoints` and one full period of the lowest band frequency."""
    return max(int(cfg.min_timepoints), math.ceil(1.0 / (cfg.band[0] * tr)))


def check_run_length(n_timepoints: int, tr: float, cfg: RestDescriptorConfig, source) -> None:
    """Raise InputError, saying how short the run is and what is needed, if FC can't be estimated."""
    need = required_timepoints(tr, cfg)
    if n_timepoints < need:
        raise InputError(source, "timeseries", f"run too short to estimate FC: {n_timepoints} TRs "
                         f"({n_timepoints * tr:g} s at TR {tr:g} s); need at least {need} TRs "
                         f"({need * tr:g} s: min_timepoints={cfg.min_timepoints} and one period of "
                         f"{cfg.band[0]:g} Hz)")


# --------------------------------------------------------------------- per-subject measures
def network_fc(fc: np.ndarray, nets: np.ndarray) -> np.ndarray:
    """Within (diagonal) and between (off-diagonal) network FC (7, 7) from a (P, P) FC matrix."""
    n = len(NETWORKS)
    out = np.zeros((n, n))
    for a in range(n):
        ia = np.flatnonzero(nets == a)
        for b in range(n):
            ib = np.flatnonzero(nets == b)
            block = fc[np.ix_(ia, ib)]
            if a == b:  # distinct pairs only: the diagonal is not a connection
                out[a, b] = block[np.triu_indices(ia.size, 1)].mean()
            else:
                out[a, b] = block.mean()
    return out


def strongest_edges(fc: np.ndarray, density: float) -> np.ndarray:
    """Symmetric boolean adjacency of the ``density`` fraction of strongest positive edges."""
    p = fc.shape[0]
    iu = np.triu_indices(p, 1)
    n_keep = int(round(density * iu[0].size))
    order = np.argsort(-fc[iu], kind="stable")[:n_keep]
    order = order[fc[iu][order] > 0]
    adj = np.zeros((p, p), bool)
    adj[iu[0][order], iu[1][order]] = True
    return adj | adj.T


def graph_metrics(fc: np.ndarray, nets: np.ndarray, density: float) -> dict:
    """Global efficiency, mean clustering and 7-network modularity of the thresholded graph."""
    adj = strongest_edges(fc, density)
    a = adj.astype(np.float64)
    p = a.shape[0]
    dist = shortest_path(a, unweighted=True, directed=False)
    off = ~np.eye(p, dtype=bool)
    with np.errstate(divide="ignore"):
        efficiency = float(np.where(np.isinf(dist), 0.0, 1.0 / dist)[off].mean())
    degree = a.sum(1)
    triangles = np.diag(a @ a @ a)
    possible = degree * (degree - 1)
    clustering = float(np.where(possible > 0, triangles / np.maximum(possible, 1), 0.0).mean())
    w = np.where(adj, fc, 0.0)
    two_m = w.sum()
    if two_m > 0:
        strength = w.sum(1)
        same = nets[:, None] == nets[None, :]
        modularity = float(((w - np.outer(strength, strength) / two_m) * same).sum() / two_m)
    else:
        modularity = 0.0
    return {"efficiency": efficiency, "clustering": clustering, "modularity": modularity}


def amplitude(timeseries: np.ndarray, tr: float, band: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """ALFF and fALFF per parcel of a (T, P) run (see module docstring)."""
    x = np.asarray(timeseries, np.float64)
    t = x.shape[0]
    amp = 2.0 * np.abs(np.fft.rfft(x - x.mean(0), axis=0)) / t
    freqs = np.fft.rfftfreq(t, d=tr)
    in_band = (freqs >= band[0]) & (freqs <= band[1])
    if not in_band.any():
        raise InputError("timeseries", "band",
                         f"no frequency of a {t}-TR run at TR {tr:g} s lies in {band} Hz")
    total = amp[freqs > 0].sum(0)
    alff = amp[in_band].mean(0)
    falff = np.where(total > 0, amp[in_band].sum(0) / np.where(total > 0, total, 1.0), 0.0)
    return alff, falff


def lag1_autocorrelation(timeseries: np.ndarray) -> np.ndarray:
    """Lag-1 Pearson autocorrelation per parcel of a (T, P) run."""
    x = np.asarray(timeseries, np.float64)
    a, b = x[:-1] - x[:-1].mean(0), x[1:] - x[1:].mean(0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return np.where(denom > 0, (a * b).sum(0) / np.where(denom > 0, denom, 1.0), 0.0)


def population_zscore(values: np.ndarray, reference=None) -> np.ndarray:
    """z-score along axis 0 (subjects) against the mean and spread of the `reference` rows (None: all);
    NaN without a population reference (fewer than ``MIN_POPULATION`` rows) or with zero spread."""
    values = np.asarray(values, np.float64)
    population = values if reference is None else values[np.asarray(reference)]
    if population.shape[0] < MIN_POPULATION:
        return np.full(values.shape, np.nan)
    std = population.std(0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(std > 0, (values - population.mean(0)) / std, np.nan)


# --------------------------------------------------------------------- population
@dataclass
class RestFeatures:
    """Every rest measure of a population, arrays over subjects S (networks in ``NETWORKS`` order).

    Attributes
    ----------
    network_fc, network_fc_z : ndarray (S, 7, 7)
    graph, graph_z : dict of str to ndarray (S,)
    gradient : ndarray (S, P)
        Aligned principal gradient.
    gradient_range, gradient_share : ndarray (S,)
    alff, falff, autocorr : ndarray (S, 7)
        Network means of the parcel values.
    alff_z, falff_z, autocorr_z : ndarray (S, 7)
    """

    network_fc: np.ndarray
    network_fc_z: np.ndarray
    graph: dict
    graph_z: dict
    gradient: np.ndarray
    gradient_range: np.ndarray
    gradient_share: np.ndarray
    alff: np.ndarray
    falff: np.ndarray
    autocorr: np.ndarray
    alff_z: np.ndarray
    falff_z: np.ndarray
    autocorr_z: np.ndarray

    def gradient_ends(self, s: int, atlas: Atlas) -> tuple[str, str]:
        """Networks with the lowest and highest mean principal-gradient value for subject `s`."""
        means = network_means(self.gradient[s], atlas)
        return NETWORKS[int(np.argmin(means))], NETWORKS[int(np.argmax(means))]


def aligned_gradients(fcs: list[np.ndarray], nets: np.ndarray, n_components: int, seed: int, reference_rows=None):
    """Principal gradients aligned to the gradients of the mean FC of `reference_rows` (None: all
    subjects), and leading-eigenvalue shares."""
    from brainspace.gradient import GradientMaps

    kwargs = dict(n_components=n_components, approach="dm", kernel="normalized_angle", random_state=seed)
    template = np.mean(fcs if reference_rows is None else [fcs[i] for i in reference_rows], 0)
    reference = GradientMaps(**kwargs).fit(np.tanh(template)).gradients_
    # orient the reference so the visual network is at the low end: diffusion-map signs are arbitrary
    if reference[nets == NETWORKS.index("Vis"), 0].mean() > 0:
        reference[:, 0] *= -1
    fitted = GradientMaps(alignment="procrustes", **kwargs).fit([np.tanh(f) for f in fcs],
                                                                reference=reference)
    principal = np.stack([g[:, 0] for g in fitted.aligned_])
    share = np.array([lam[0] / lam.sum() for lam in fitted.lambdas_])
    return principal, share


def rest_features(timeseries: np.ndarray, atlas: Atlas, tr: float, cfg: RestDescriptorConfig,
                  seed: int = 0, source: str = "rest dataset", progress: bool = True,
                  reference=None) -> RestFeatures:
    """All rest measures of a population ``[S, T, P]`` (validated: length, parcels, finiteness).

    `reference` (subject indices; None: all) is the population the z-scores and the gradient template
    come from: the corpus passes its training subjects, so no held-out run shapes another's description.
    """
    ts = np.asarray(timeseries)
    if ts.ndim != 3 or ts.shape[2] != atlas.n_parcels:
        raise InputError(source, "timeseries", f"shape {ts.shape}, expected [S, T, {atlas.n_parcels}]")
    check_run_length(ts.shape[1], tr, cfg, source)
    nets = network_index(atlas)
    fcs, net_fc, graph, alff, falff, ac = [], [], [], [], [], []
    for s in tqdm(range(ts.shape[0]), desc="rest descriptors", disable=not progress):
        run = np.asarray(ts[s], np.float64)
        check_finite(run, source, f"timeseries[{s}]")
        fc = fisher_fc(run)
        fcs.append(fc)
        net_fc.append(network_fc(fc, nets))
        graph.append(graph_metrics(fc, nets, cfg.density))
        a, f = amplitude(run, tr, cfg.band)
        alff.append(network_means(a, atlas))
        falff.append(network_means(f, atlas))
        ac.append(network_means(lag1_autocorrelation(run), atlas))
    principal, share = aligned_gradients(fcs, nets, cfg.n_gradients, seed, reference)
    graph_arrays = {k: np.array([g[k] for g in graph]) for k in GRAPH_METRICS}
    net_fc, alff, falff, ac = (np.stack(v) for v in (net_fc, alff, falff, ac))
    return RestFeatures(
        network_fc=net_fc, network_fc_z=population_zscore(net_fc, reference), graph=graph_arrays,
        graph_z={k: population_zscore(v, reference) for k, v in graph_arrays.items()},
        gradient=principal, gradient_range=principal.max(1) - principal.min(1), gradient_share=share,
        alff=alff, falff=falff, autocorr=ac, alff_z=population_zscore(alff, reference),
        falff_z=population_zscore(falff, reference), autocorr_z=population_zscore(ac, reference))
