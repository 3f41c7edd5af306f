"""Descriptor values equal direct computations on small inputs; texts carry the exact numbers."""

from __future__ import annotations

import numpy as np
import pytest

from fmrilm.brain.atlas import NETWORKS
from fmrilm.brain.rest_covariance import fisher_fc
from fmrilm.corpus.descriptors_rest import (
    RestDescriptorConfig,
    amplitude,
    check_run_length,
    graph_metrics,
    lag1_autocorrelation,
    network_fc,
    population_zscore,
    rest_features,
    strongest_edges,
)
from fmrilm.corpus.descriptors_task import describe_task_scan, network_index
from fmrilm.corpus.phrasing import NETWORK_NAMES, describe_rest, describe_task, fmt, sample_rng
from fmrilm.corpus.toy import toy_runs
from fmrilm.errors import InputError


def test_task_descriptor_matches_numpy(atlas):
    values = np.random.default_rng(0).standard_normal(atlas.n_parcels)
    desc = describe_task_scan(values, atlas, top_k=4)
    for net in NETWORKS:
        members = [i for i, p in enumerate(atlas.parcels) if p.network == net]
        assert desc.network_means[net] == pytest.approx(values[members].mean())
    top = sorted(range(atlas.n_parcels), key=lambda i: -values[i])[:4]
    assert [p.name for p in desc.top_parcels] == [atlas.parcels[i].name for i in top]
    assert [p.hemisphere for p in desc.top_parcels] == [atlas.parcels[i].hemisphere for i in top]
    left = sum(max(v, 0) for v, p in zip(values, atlas.parcels, strict=True) if p.hemisphere == "LH")
    right = sum(max(v, 0) for v, p in zip(values, atlas.parcels, strict=True) if p.hemisphere == "RH")
    assert desc.lateralisation == pytest.approx((left - right) / (left + right))


def test_task_description_text_has_exact_numbers(atlas):
    values = np.linspace(-1, 2, atlas.n_parcels)
    desc = describe_task_scan(values, atlas)
    text = describe_task(desc, sample_rng(0, "x"))
    assert fmt(desc.lateralisation, True) in text
    for p in desc.top_parcels:
        assert p.name in text and fmt(p.value, True) in text
    best = max(desc.network_means, key=desc.network_means.get)
    assert NETWORK_NAMES[best] in text and fmt(desc.network_means[best], True) in text
    assert describe_task(desc, sample_rng(0, "x")) == text  # seeded wording


def test_task_descriptor_rejects_wrong_shape(atlas):
    with pytest.raises(InputError, match="parcels"):
        describe_task_scan(np.zeros(99), atlas)


def test_fc_and_network_fc_match_numpy(atlas):
    ts = toy_runs(atlas, 1, 90, seed=3)[0].astype(np.float64)
    z = fisher_fc(ts)
    r = np.corrcoef(ts.T)
    iu = np.triu_indices(atlas.n_parcels, 1)
    np.testing.assert_allclose(z[iu], np.arctanh(r[iu]), atol=1e-9)
    nets = network_index(atlas)
    net = network_fc(z, nets)
    vis, dmn = np.flatnonzero(nets == 0), np.flatnonzero(nets == 6)
    pairs = [z[i, j] for a, i in enumerate(vis) for j in vis[a + 1:]]
    assert net[0, 0] == pytest.approx(np.mean(pairs))
    assert net[0, 6] == pytest.approx(np.mean([z[i, j] for i in vis for j in dmn]))


def test_graph_metrics_match_direct_computation():
    rng = np.random.default_rng(1)
    p = 12
    a = rng.standard_normal((p, p))
    fc = (a + a.T) / 2
    np.fill_diagonal(fc, 0)
    nets = np.arange(p) % 3
    m = graph_metrics(fc, nets, density=0.3)
    adj = strongest_edges(fc, 0.3)
    # the kept edges are the round(0.3 * 66) = 20 largest positive values
    vals = np.sort(fc[np.triu_indices(p, 1)])[::-1]
    assert adj[np.triu_indices(p, 1)].sum() == min(20, (vals > 0).sum())
    # Floyd–Warshall for efficiency
    d = np.where(adj, 1.0, np.inf)
    np.fill_diagonal(d, 0)
    for k in range(p):
        d = np.minimum(d, d[:, [k]] + d[[k], :])
    off = ~np.eye(p, dtype=bool)
    assert m["efficiency"] == pytest.approx(np.mean([0 if np.isinf(x) else 1 / x for x in d[off]]))
    clus = []
    for i in range(p):
        nb = np.flatnonzero(adj[i])
        k = nb.size
        links = sum(adj[x, y] for x in nb for y in nb if x < y)
        clus.append(links / (k * (k - 1) / 2) if k > 1 else 0.0)
    assert m["clustering"] == pytest.approx(np.mean(clus))
    w = np.where(adj, fc, 0)
    two_m, s = w.sum(), w.sum(1)
    q = sum(w[i, j] - s[i] * s[j] / two_m for i in range(p) for j in range(p) if nets[i] == nets[j]) / two_m
    assert m["modularity"] == pytest.approx(q)


def test_amplitude_and_autocorrelation_match_direct_computation():
    rng = np.random.default_rng(2)
    t, tr, band = 64, 2.0, (0.01, 0.08)
    x = rng.standard_normal((t, 3))
    alff, falff = amplitude(x, tr, band)
    k = np.arange(t // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(k, np.arange(t)) / t)  # explicit DFT, not np.fft
    amp = 2 * np.abs(dft @ (x - x.mean(0))) / t
    f = k / (t * tr)
    inb = (f >= band[0]) & (f <= band[1])
    np.testing.assert_allclose(alff, amp[inb].mean(0), rtol=1e-10)
    np.testing.assert_allclose(falff, amp[inb].sum(0) / amp[f > 0].sum(0), rtol=1e-10)
    ac = lag1_autocorrelation(x)
    np.testing.assert_allclose(ac, [np.corrcoef(x[:-1, i], x[1:, i])[0, 1] for i in range(3)], rtol=1e-10)


def test_population_zscore():
    v = np.array([[1.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    z = population_zscore(v)
    np.testing.assert_allclose(z[:, 0], (v[:, 0] - v[:, 0].mean()) / v[:, 0].std(ddof=1))
    assert np.isnan(z[:, 1]).all()  # no spread: no reference
    assert np.isnan(population_zscore(v[:2])).all()  # too few subjects


def test_population_zscore_takes_its_reference_from_the_given_rows_only():
    v = np.array([[1.0], [2.0], [4.0], [100.0]])  # row 3: a held-out subject
    z = population_zscore(v, reference=[0, 1, 2])
    np.testing.assert_allclose(z[:3], population_zscore(v[:3]))  # the outlier moves nobody's z-score
    assert z[3, 0] == pytest.approx((100.0 - 7 / 3) / v[:3, 0].std(ddof=1))


def test_run_too_short_says_how_short():
    cfg = RestDescriptorConfig(min_timepoints=60)
    with pytest.raises(InputError, match=r"run too short to estimate FC: 40 TRs \(80 s at TR 2 s\); "
                                         r"need at least 60 TRs"):
        check_run_length(40, 2.0, cfg, "rest")
    with pytest.raises(InputError, match="need at least 100 TRs"):  # one period of 0.01 Hz at TR 1 s
        check_run_length(80, 1.0, cfg, "rest")
    check_run_length(60, 2.0, cfg, "rest")


def test_rest_features_and_text(atlas):
    ts = toy_runs(atlas, 5, 100, seed=4)
    f = rest_features(ts, atlas, 2.0, RestDescriptorConfig(), seed=0, progress=False)
    nets = network_index(atlas)
    direct = np.stack([network_fc(fisher_fc(ts[s]), nets) for s in range(5)])
    np.testing.assert_allclose(f.network_fc, direct)
    np.testing.assert_allclose(f.network_fc_z, (direct - direct.mean(0)) / direct.std(0, ddof=1))
    assert f.gradient.shape == (5, atlas.n_parcels)
    assert np.all((f.gradient_share > 0) & (f.gradient_share <= 1))
    text = describe_rest(f, 2, atlas, sample_rng(0, "r"))
    for i, net in enumerate(NETWORKS):
        value, z = fmt(f.network_fc[2, i, i]), fmt(f.network_fc_z[2, i, i], True)
        assert f"{NETWORK_NAMES[net]} {value}, z = {z}" in text
    assert fmt(f.graph["efficiency"][2]) in text and fmt(f.gradient_range[2]) in text
    low, high = f.gradient_ends(2, atlas)
    assert NETWORK_NAMES[low] in text and NETWORK_NAMES[high] in text
