"""Atlas sanity: Schaefer-100 on fsaverage5, grouping round trips, selection, refusals."""

import numpy as np
import pytest

from fmrilm.brain.atlas import NETWORKS, Atlas
from fmrilm.errors import InputError


@pytest.fixture(scope="module")
def schaefer100():
    return Atlas.schaefer(100)


def test_schaefer100_has_50_nonempty_parcels_per_hemisphere(schaefer100):
    a = schaefer100
    assert a.n_parcels == 100 and a.n_vertices == 20484
    assert sum(p.hemisphere == "LH" for p in a.parcels) == 50
    assert all(v.size > 20 for v in a.parcel_vertices)
    # Left-hemisphere parcels live on left vertices only, and vice versa.
    hemi = a.hemispheres
    for p, v in zip(a.parcels, a.parcel_vertices):
        assert (hemi[v] == (p.hemisphere == "RH")).all(), p.name
    assert 0.05 < (a.labels == 0).mean() < 0.12  # medial wall ~8 %
    assert {p.network for p in a.parcels} == set(NETWORKS)


def test_visual_parcels_are_posterior_and_known_labels_sit_where_expected(schaefer100):
    a = schaefer100
    y = a.centroids[:, 1]
    vis = a.select(networks=["Vis"])
    assert y[vis].mean() < -70 and y[vis].mean() < y.mean() - 40
    assert a.centroids[4, 1] < -80  # label 5: occipital
    assert a.centroids[22, 2] > 40  # label 23: FEF, dorsal
    assert a.centroids[30, 2] < -10 and a.centroids[30, 1] > 15  # label 31: orbitofrontal
    assert abs(a.centroids[49, 0]) < 15 and a.centroids[49, 1] < -40  # label 50: precuneus, medial


def test_group_ungroup_round_trip_and_parcellate(schaefer100):
    a = schaefer100
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, a.n_vertices)).astype(np.float32)  # unequal leading dims on purpose
    grouped, mask = a.group(x)
    assert grouped.shape == (3, 2, 100, a.vmax) and mask.shape == (100, a.vmax)
    assert (grouped[..., ~mask] == 0).all()
    back = a.ungroup(grouped)
    cortex = a.labels > 0
    np.testing.assert_array_equal(back[..., cortex], x[..., cortex])
    assert (back[..., ~cortex] == 0).all()
    means = a.parcellate(x)
    np.testing.assert_allclose(means[1, 0, 7], x[1, 0, a.parcel_vertices[7]].mean(), rtol=1e-5)
    np.testing.assert_allclose(a.parcellate(a.to_vertices(means)), means, rtol=1e-5)


def test_selection_by_name_network_hemisphere_and_coordinate(schaefer100):
    a = schaefer100
    idx = a.select(networks=["Default"], hemisphere="RH")
    assert idx.size > 5 and all(a.parcels[i].network == "Default" and a.parcels[i].hemisphere == "RH" for i in idx)
    assert a.select(names=["7Networks_LH_Vis_5"]).tolist() == [4]
    near_v1 = a.select(near=(-8, -95, 0))
    assert a.parcels[int(near_v1[0])].network == "Vis"
    within = a.select(near=(-8, -95, 0), radius=30)
    assert set(near_v1) <= set(within)
    assert np.array_equal(a.vertices_of([0, 1]), np.sort(np.concatenate(a.parcel_vertices[:2])))


def test_mesh_adjacency_is_symmetric_and_local(schaefer100):
    adj = schaefer100.adjacency
    assert (adj != adj.T).nnz == 0
    deg = np.asarray(adj.sum(1)).ravel()
    assert deg.min() >= 3 and 5.5 < deg.mean() < 6.5  # a triangulated sphere: mean degree ≈ 6
    rows, cols = adj.nonzero()
    lengths = np.linalg.norm(schaefer100.coords[rows] - schaefer100.coords[cols], axis=1)
    assert np.median(lengths) < 10  # neighbours are millimetres apart


def test_other_scales_come_through_the_same_interface():
    a = Atlas.schaefer(200)
    assert a.n_parcels == 200 and a.name == "schaefer200_fsaverage5"
    assert sum(p.hemisphere == "LH" for p in a.parcels) == 100
    assert {p.network for p in a.parcels} <= set(NETWORKS)


def test_bad_input_names_the_problem(schaefer100):
    a = schaefer100
    with pytest.raises(InputError, match="20000 vertices.*20484"):
        a.group(np.zeros((2, 20000), np.float32), source="run.mgz")
    with pytest.raises(InputError, match="unknown parcel name"):
        a.parcel_index("7Networks_LH_Nowhere_1")
    with pytest.raises(InputError, match="unknown network"):
        a.select(networks=["Auditory"])
    with pytest.raises(InputError, match="n_parcels"):
        Atlas.schaefer(150)
    other = dict(a.describe(), fingerprint="0" * 16)
    with pytest.raises(InputError, match="fingerprint"):
        a.check_same(other, "tokenizer_config.json")
