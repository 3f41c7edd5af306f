"""FAISS semantic indexes: exactness, approximate recall, persistence, incremental adds, bad input."""

import numpy as np
import pytest

from fmrilm.errors import InputError
from fmrilm.retrieval.index import IndexConfig, SemanticIndex

# Small enough for CPU tests, large enough to train IVF-PQ (16 lists, 16-centroid PQ codebooks).
SMALL_APPROX = IndexConfig(nlist=16, pq_m=4, pq_bits=4, nprobe=16, hnsw_m=16, ef_construction=64)


def clustered(n, d, seed=0):
    """Unit vectors around 20 centres, so neighbours are meaningful (unlike isotropic noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, d))
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    x = clustered(700, 16)
    return x, [f"item-{i}" for i in range(len(x))], [{"row": i, "caption": f"c{i}"} for i in range(len(x))]


def test_flat_search_is_exact_and_aligned(data):
    x, ids, meta = data
    index = SemanticIndex.build(x, ids, meta)
    assert index.kind == "flat" and len(index) == 700 and index.dim == 16
    queries = x[:30]
    scores, hit_ids, hit_meta = index.search(queries, k=5)
    brute = queries @ x.T
    expected = np.argsort(-brute, axis=1)[:, :5]
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), atol=1e-5)
    assert [row[0] for row in hit_ids] == ids[:30]
    assert all(m["caption"] == f"c{int(i.split('-')[1])}" for row_i, row_m in zip(hit_ids, hit_meta)
               for i, m in zip(row_i, row_m))
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_save_load_gives_identical_results(tmp_path, data, kind):
    x, ids, meta = data
    index = SemanticIndex.build(x, ids, meta, SMALL_APPROX, kind=kind)
    before = index.search(x[::7], k=5)
    index.save(tmp_path / "ix")
    loaded = SemanticIndex.load(tmp_path / "ix", dim=16)
    after = loaded.search(x[::7], k=5)
    assert loaded.kind == kind and loaded.config == index.config
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1] == after[1] and before[2] == after[2]


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_kinds_rerank_to_exact_scores_with_high_recall(data, kind):
    x, ids, meta = data
    exact = SemanticIndex.build(x, ids, meta, kind="flat")
    approx = SemanticIndex.build(x, ids, meta, SMALL_APPROX, kind=kind)
    queries = clustered(50, 16, seed=1)
    _, exact_ids, _ = exact.search(queries, k=5)
    scores, approx_ids, _ = approx.search(queries, k=5)
    recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approx_ids, exact_ids)])
    assert recall >= 0.9
    # Re-ranked scores are true inner products, not PQ approximations.
    rows = np.array([[ids.index(i) for i in row] for row in approx_ids])
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, x[rows]), atol=1e-5)


def test_auto_kind_follows_size_and_can_be_overridden(data):
    cfg = IndexConfig(flat_max=100, hnsw_max=500)
    assert [cfg.resolve_kind(n) for n in (100, 101, 500, 501)] == ["flat", "hnsw", "hnsw", "ivfpq"]
    x, ids, _ = data
    assert SemanticIndex.build(x[:300], ids[:300], config=cfg).kind == "hnsw"
    assert SemanticIndex.build(x[:300], ids[:300], config=cfg, kind="flat").kind == "flat"
    with pytest.raises(InputError, match="kind"):
        SemanticIndex.build(x, ids, kind="annoy")


def test_incremental_adds_match_a_single_build_and_survive_reload(tmp_path, data):
    x, ids, meta = data
    whole = SemanticIndex.build(x, ids, meta)
    part = SemanticIndex.build(x[:400], ids[:400], meta[:400])
    part.save(tmp_path / "ix")
    part = SemanticIndex.load(tmp_path / "ix")
    part.add(x[400:], ids[400:], meta[400:])
    assert len(part) == 700 and part.ids == ids and part.metadata == meta
    a, b = whole.search(x[650:660], k=3), part.search(x[650:660], k=3)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


def test_bad_input_is_refused_before_anything_changes(tmp_path, data):
    x, ids, meta = data
    index = SemanticIndex.build(x[:50], ids[:50], meta[:50])
    with pytest.raises(InputError, match="dim"):
        index.search(np.ones((2, 8), np.float32))
    with pytest.raises(InputError, match="dim"):
        index.add(np.ones((1, 8), np.float32), ["new"])
    with pytest.raises(InputError, match="already indexed"):
        index.add(x[:1], [ids[0]])
    with pytest.raises(InputError, match="rows"):
        index.add(x[:2], ["a"])
    with pytest.raises(InputError, match="non-finite"):
        index.add(np.full((1, 16), np.nan, np.float32), ["nan"])
    assert len(index) == 50 and len(index.ids) == 50
    with pytest.raises(InputError, match="duplicate"):
        SemanticIndex.build(x[:2], ["a", "a"])
    with pytest.raises(InputError, match="needs >= 16"):
        SemanticIndex.build(x[:10], ids[:10], config=SMALL_APPROX, kind="ivfpq")
    index.save(tmp_path / "ix")
    with pytest.raises(InputError, match="already exists"):
        index.save(tmp_path / "ix")
    with pytest.raises(InputError, match="expected 384"):
        SemanticIndex.load(tmp_path / "ix", dim=384)


def test_k_larger_than_index_is_capped(data):
    x, ids, _ = data
    scores, hit_ids, hit_meta = SemanticIndex.build(x[:3], ids[:3]).search(x[0], k=10)
    assert scores.shape == (1, 3) and sorted(hit_ids[0]) == ids[:3] and hit_meta == [[{}, {}, {}]]
