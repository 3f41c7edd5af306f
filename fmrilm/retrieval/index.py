"""FAISS inner-product indexes over unit-norm embeddings, saved with their ids and metadata.

One :class:`SemanticIndex` holds either captions (MiniLM text embeddings, queried with brain
embeddings) or scans (brain embeddings, queried with text embeddings); both live in the 384-d
MiniLM space, so the index does not care which direction it serves.

Index kinds, chosen by size unless ``kind`` is given:

- ``flat``  exact inner product (``IndexFlatIP``); the default up to ``flat_max`` items (100k),
  where a brute-force matmul is still milliseconds per query.
- ``hnsw``  graph search (``IndexHNSWFlat``), up to ``hnsw_max`` items. HNSW stores the full
  vectors, so the scores it returns are already exact; re-ranking here means searching
  ``rerank_factor * k`` candidates (``efSearch``) and keeping the best ``k``, which fixes most
  graph misses.
- ``ivfpq`` inverted lists with product-quantised codes wrapped in ``IndexRefineFlat``: the PQ
  codes shortlist ``rerank_factor * k`` candidates that are re-scored exactly from the stored
  vectors. Used above ``hnsw_max`` where full-precision graphs stop fitting in memory.

A saved index is a directory written atomically::

    DIR/index.faiss      faiss.write_index
    DIR/ids.json         one id (str) per row
    DIR/metadata.jsonl   one JSON object per row
    DIR/config.json      dimension, kind, parameters, count, faiss version

Examples
--------
>>> index = SemanticIndex.build(embed_texts(captions), ids=keys, metadata=[{"caption": c} for c in captions])
>>> scores, ids, meta = index.search(brain_embeddings, k=5)
>>> index.save("runs/demo/retrieval/captions")
>>> SemanticIndex.load("runs/demo/retrieval/captions").search(...)
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from fmrilm.config import from_dict
from fmrilm.errors import InputError, check_finite
from fmrilm.io import atomic_dir, read_json, read_jsonl, write_json, write_jsonl

KINDS = ("flat", "hnsw", "ivfpq")
FORMAT_VERSION = 1


@dataclasses.dataclass
class IndexConfig:
    """How an index is built and searched.

    Parameters
    ----------
    kind : {"auto", "flat", "hnsw", "ivfpq"}
        ``auto`` picks by the number of items at build time (see module docstring).
    flat_max, hnsw_max : int
        Size thresholds for ``auto``.
    normalize : bool
        L2-normalise embeddings and queries, making inner product the cosine similarity.
    hnsw_m, ef_construction : int
        HNSW graph degree and build-time beam width.
    nlist : int
        IVF lists; 0 picks ``4 * sqrt(n)`` (the FAISS guideline), at most n / 39 so each list
        gets enough training points.
    pq_m : int
        PQ sub-quantisers; 0 picks the largest divisor of the dimension giving >= 8 dims each
        (48 one-byte codes for 384-d MiniLM vectors).
    pq_bits : int
        Bits per PQ code (8 = 256 centroids per sub-quantiser).
    nprobe : int
        IVF lists visited per query.
    rerank_factor : int
        Candidates per requested neighbour that approximate kinds re-score exactly.
    """

    kind: str = "auto"
    flat_max: int = 100_000
    hnsw_max: int = 2_000_000
    normalize: bool = True
    hnsw_m: int = 32
    ef_construction: int = 200
    nlist: int = 0
    pq_m: int = 0
    pq_bits: int = 8
    nprobe: int = 16
    rerank_factor: int = 10

    def resolve_kind(self, n: int) -> str:
        if self.kind == "auto":
            return "flat" if n <= self.flat_max else "hnsw" if n <= self.hnsw_max else "ivfpq"
        if self.kind not in KINDS:
            raise InputError("IndexConfig", "kind", f"{self.kind!r}; expected 'auto' or one of {KINDS}")
        return self.kind


def _faiss():
    import faiss

    return faiss


class SemanticIndex:
    """A FAISS index plus the id and metadata of every row.

    Build with :meth:`build`, extend with :meth:`add`, query with :meth:`search`, persist with
    :meth:`save` / :meth:`load`. Do not construct directly.
    """

    def __init__(self, index, ids: list[str], metadata: list[dict], config: IndexConfig, kind: str):
        self.index, self.ids, self.metadata = index, ids, metadata
        self.config, self.kind = config, kind

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        return f"SemanticIndex(kind={self.kind!r}, n={len(self)}, dim={self.dim})"

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, embeddings, ids, metadata=None, config: IndexConfig | None = None,
              kind: str | None = None) -> SemanticIndex:
        """Index `embeddings` [N, D] with one id (str) and one metadata dict per row.

        `kind` overrides ``config.kind``. Approximate kinds are trained on the given rows, so build
        from a representative set; later :meth:`add` calls reuse that training.
        """
        config = dataclasses.replace(config or IndexConfig(), **({"kind": kind} if kind else {}))
        vectors = _as_matrix(embeddings, "embeddings", dim=None, normalize=config.normalize)
        ids, metadata = _check_rows(ids, metadata, len(vectors))
        if len(set(ids)) != len(ids):
            raise InputError("embeddings", "ids", "duplicate ids")
        chosen = config.resolve_kind(len(vectors))
        index = _new_index(chosen, vectors, config)
        index.add(vectors)
        return cls(index, ids, metadata, config, chosen)

    def add(self, embeddings, ids, metadata=None) -> None:
        """Append rows incrementally (ids must be new); the index kind and training are kept."""
        vectors = _as_matrix(embeddings, "embeddings", dim=self.dim, normalize=self.config.normalize)
        ids, metadata = _check_rows(ids, metadata, len(vectors))
        clash = set(ids) & set(self.ids) or (len(set(ids)) != len(ids) and {"(within the new rows)"})
        if clash:
            raise InputError("embeddings", "ids", f"already indexed or duplicated: {sorted(clash)[:5]}")
        self.index.add(vectors)
        self.ids.extend(ids)
        self.metadata.extend(metadata)

    # ------------------------------------------------------------------ searching
    def search(self, queries, k: int = 5) -> tuple[np.ndarray, list[list[str]], list[list[dict]]]:
        """The `k` best rows per query by inner product, best first.

        Parameters
        ----------
        queries : array [Q, D] or [D]
        k : int
            Capped at the number of indexed rows.

        Returns
        -------
        scores : float32 [Q, k']
            Exact inner products (cosine similarity when ``normalize``), descending.
        ids : list of list of str
        metadata : list of list of dict
        """
        if k < 1:
            raise InputError("search", "k", f"{k}; must be >= 1")
        vectors = _as_matrix(queries, "queries", dim=self.dim, normalize=self.config.normalize)
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(vectors), 0), np.float32), [[] for _ in vectors], [[] for _ in vectors]
        self._set_search_params(k)
        scores, rows = self.index.search(vectors, k)
        # Approximate kinds can come back short (label -1) when too few candidates were reached.
        ids = [[self.ids[r] for r in row if r >= 0] for row in rows]
        meta = [[self.metadata[r] for r in row if r >= 0] for row in rows]
        return scores.astype(np.float32), ids, meta

    def vectors(self) -> np.ndarray:
        """The stored vectors [N, D] (exact for flat and HNSW; the refine store's copy for IVF-PQ)."""
        return self.index.reconstruct_n(0, len(self)).astype(np.float32)

    def _set_search_params(self, k: int) -> None:
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.config.rerank_factor * k, 16)
        elif self.kind == "ivfpq":
            self.index.k_factor = float(self.config.rerank_factor)
            _faiss().extract_index_ivf(self.index.base_index).nprobe = self.config.nprobe

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir, overwrite: bool = False) -> Path:
        """Write the index directory atomically (see module docstring)."""
        out_dir = Path(out_dir)
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            _faiss().write_index(self.index, str(tmp / "index.faiss"))
            write_json(tmp / "ids.json", self.ids)
            write_jsonl(tmp / "metadata.jsonl", self.metadata)
            write_json(tmp / "config.json", {"format_version": FORMAT_VERSION, "kind": self.kind,
                                             "dim": self.dim, "n": len(self),
                                             "faiss_version": _faiss().__version__,
                                             "config": dataclasses.asdict(self.config)})
        return out_dir

    @classmethod
    def load(cls, path, dim: int | None = None) -> SemanticIndex:
        """Read a saved index; `dim`, when given, must match its dimension."""
        path = Path(path)
        if not path.is_dir():
            raise InputError(path, "index", "directory missing")
        info = read_json(path / "config.json")
        if info.get("format_version") != FORMAT_VERSION:
            raise InputError(path / "config.json", "format_version",
                             f"{info.get('format_version')} is not {FORMAT_VERSION}")
        if dim is not None and info["dim"] != dim:
            raise InputError(path, "dim", f"index holds {info['dim']}-d vectors, expected {dim}")
        if not (path / "index.faiss").is_file():
            raise InputError(path / "index.faiss", "file", "missing")
        index = _faiss().read_index(str(path / "index.faiss"))
        ids = read_json(path / "ids.json")
        metadata = read_jsonl(path / "metadata.jsonl")
        if not (index.d == info["dim"] and index.ntotal == info["n"] == len(ids) == len(metadata)):
            raise InputError(path, "rows", f"index has {index.ntotal} rows of dim {index.d}, ids {len(ids)}, "
                             f"metadata {len(metadata)}, config says {info['n']} of dim {info['dim']}")
        config = from_dict(IndexConfig, info["config"], str(path / "config.json"))
        return cls(index, ids, metadata, config, info["kind"])


# ---------------------------------------------------------------------- helpers
def _as_matrix(values, field: str, dim: int | None, normalize: bool) -> np.ndarray:
    """C-contiguous float32 [N, D], checked (and L2-normalised when asked)."""
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InputError(field, "shape", f"{arr.shape}; expected [N, D]")
    if dim is not None and arr.shape[1] != dim:
        raise InputError(field, "dim", f"{arr.shape[1]}-d vectors, the index holds {dim}-d")
    check_finite(arr, field)
    if normalize:
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InputError(field, "norm", f"{int((norms == 0).sum())} zero vectors cannot be normalised")
        arr = arr / norms
    return np.ascontiguousarray(arr)


def _check_rows(ids, metadata, n: int) -> tuple[list[str], list[dict]]:
    ids = [str(i) for i in ids]
    metadata = [{} for _ in ids] if metadata is None else [dict(m) for m in metadata]
    if not len(ids) == len(metadata) == n:
        raise InputError("embeddings", "rows", f"{n} vectors, {len(ids)} ids, {len(metadata)} metadata rows")
    return ids, metadata


def _new_index(kind: str, vectors: np.ndarray, cfg: IndexConfig):
    faiss = _faiss()
    n, d = vectors.shape
    if kind == "flat":
        return faiss.IndexFlatIP(d)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        return index
    nlist = cfg.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
    pq_m = cfg.pq_m or max([m for m in range(1, d + 1) if d % m == 0 and d // m >= 8] or [1])
    if d % pq_m:
        raise InputError("IndexConfig", "pq_m", f"{pq_m} does not divide the dimension {d}")
    # k-means needs at least as many points as centroids, for the lists and for each PQ codebook.
    need = max(nlist, 2 ** cfg.pq_bits)
    if n < need:
        raise InputError("embeddings", "rows", f"{n} rows cannot train an IVF-PQ index with nlist={nlist} and "
                         f"pq_bits={cfg.pq_bits} (needs >= {need}); use kind='flat' or 'hnsw'")
    base = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, pq_m, cfg.pq_bits, faiss.METRIC_INNER_PRODUCT)
    base.train(vectors)
    return faiss.IndexRefineFlat(base)
