"""The common brain space: Schaefer-2018 parcels on the fsaverage5 surface.

fsaverage5 (10242 vertices per hemisphere, bundled with nilearn) is the surface every source is
mapped to. Schaefer-2018 labels ship in brainspace on the conte69 (fs_LR 32k) surface; we carry
them onto fsaverage5 pial vertices by 3-D nearest neighbour from the conte69 surface (median
distance 1.75 mm for Schaefer-100, every parcel present, ~8 % medial wall = label 0).

Examples
--------
>>> atlas = Atlas.schaefer(100)
>>> atlas.n_parcels, atlas.n_vertices
(100, 20484)
>>> grouped, mask = atlas.group(np.zeros((2, atlas.n_vertices), np.float32))
>>> grouped.shape[:2], mask.shape[0]
((2, 100), 100)
"""

from __future__ import annotations

import csv
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fmrilm.errors import InputError

PARCEL_TABLE_100 = Path(__file__).with_name("schaefer2018_100parcels_7networks.tsv")
NETWORKS = ("Vis", "SomMot", "DorsAttn", "SalVentAttn", "Limbic", "Cont", "Default")
FSAVERAGE5_VERTICES_PER_HEMI = 10242


@dataclass(frozen=True)
class Parcel:
    """One parcel: `label` is its value in the vertex label map (1-based; 0 is the medial wall)."""

    label: int
    name: str
    hemisphere: str  # "LH" | "RH"
    network: str  # one of NETWORKS


class Atlas:
    """Parcels on a triangulated surface, with vertex grouping helpers.

    Parameters
    ----------
    name : str
        Identifier that says what the atlas is, e.g. ``schaefer100_fsaverage5``.
    parcels : list of Parcel
        In label order; ``parcels[i].label == i + 1``.
    labels : ndarray of int, shape (n_vertices,)
        Parcel label per vertex, 0 for the medial wall (left hemisphere first).
    coords : ndarray of float, shape (n_vertices, 3)
        Vertex coordinates (mm, MNI-like).
    faces : ndarray of int, shape (n_faces, 3)
        Triangles indexing `coords` (right-hemisphere faces offset by the left vertex count).
    hemi_sizes : tuple of int
        Vertices in the left and right hemisphere.
    """

    def __init__(self, name, parcels, labels, coords, faces, hemi_sizes):
        self.name = name
        self.parcels = list(parcels)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.coords = np.asarray(coords, dtype=np.float32)
        self.faces = np.asarray(faces, dtype=np.int64)
        self.hemi_sizes = tuple(int(h) for h in hemi_sizes)
        if [p.label for p in self.parcels] != list(range(1, len(self.parcels) + 1)):
            raise InputError(name, "parcels", "labels must run 1..P in order")
        self.parcel_vertices = [np.flatnonzero(self.labels == p.label) for p in self.parcels]
        empty = [p.name for p, v in zip(self.parcels, self.parcel_vertices) if v.size == 0]
        if empty:
            raise InputError(name, "labels", f"parcels with no vertex: {empty}")

    # ----------------------------------------------------------------- construction
    @classmethod
    def schaefer(cls, n_parcels: int = 100) -> Atlas:
        """Schaefer-2018 7-network parcellation (100, 200, 300, 400 or 1000) on fsaverage5.

        Names for Schaefer-100 come from the public label table. For other scales brainspace ships
        no names: parcels are named ``Schaefer{n}_{LH|RH}_{i}`` and inherit the network of the
        Schaefer-100 parcel they overlap most (Schaefer scales share the 7-network boundaries).
        """
        return _schaefer_cached(int(n_parcels))

    # ----------------------------------------------------------------- sizes
    @property
    def n_parcels(self) -> int:
        return len(self.parcels)

    @property
    def n_vertices(self) -> int:
        return int(self.labels.size)

    @property
    def vmax(self) -> int:
        """Largest parcel, in vertices: the padded width of grouped arrays."""
        return max(v.size for v in self.parcel_vertices)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Short hash of the label map: two atlases with equal fingerprints group vertices identically."""
        return hashlib.sha256(self.labels.tobytes()).hexdigest()[:16]

    def describe(self) -> dict:
        """JSON-able identity, stored in every artifact that depends on the atlas."""
        return {"name": self.name, "n_parcels": self.n_parcels, "n_vertices": self.n_vertices,
                "vmax": self.vmax, "fingerprint": self.fingerprint}

    def check_same(self, other: dict, source: str | Path) -> None:
        """Raise InputError if the atlas identity `other` (from :meth:`describe`) is not this atlas."""
        mine = self.describe()
        for key in ("name", "n_parcels", "n_vertices", "fingerprint"):
            if other.get(key) != mine[key]:
                raise InputError(source, f"atlas.{key}", f"{other.get(key)!r} does not match atlas "
                                 f"{self.name} ({key}={mine[key]!r})")

    # ----------------------------------------------------------------- geometry
    @functools.cached_property
    def adjacency(self) -> sp.csr_matrix:
        """Symmetric vertex adjacency (n_vertices × n_vertices) from the mesh triangles."""
        f = self.faces
        rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
        cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
        adj = sp.coo_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(self.n_vertices,) * 2)
        adj = adj.tocsr()
        adj.data[:] = 1.0
        return adj

    @functools.cached_property
    def centroids(self) -> np.ndarray:
        """Mean coordinate of each parcel, shape (P, 3)."""
        return np.stack([self.coords[v].mean(0) for v in self.parcel_vertices])

    @property
    def hemispheres(self) -> np.ndarray:
        """Hemisphere of each vertex: 0 left, 1 right."""
        return (np.arange(self.n_vertices) >= self.hemi_sizes[0]).astype(np.int8)

    # ----------------------------------------------------------------- selection
    def parcel_index(self, name: str) -> int:
        """0-based index of a parcel by exact name."""
        for i, p in enumerate(self.parcels):
            if p.name == name:
                return i
        raise InputError(self.name, "parcel", f"unknown parcel name {name!r}")

    def select(self, names=None, networks=None, hemisphere=None, near=None, radius=None) -> np.ndarray:
        """0-based indices of parcels matching every given criterion.

        Parameters
        ----------
        names : list of str, optional
            Exact parcel names.
        networks : list of str, optional
            Network names from NETWORKS.
        hemisphere : {"LH", "RH"}, optional
        near : array-like of 3 floats, optional
            Keep parcels whose centroid lies within `radius` mm of this point (nearest one if no radius).
        """
        keep = np.ones(self.n_parcels, bool)
        if names is not None:
            idx = [self.parcel_index(n) for n in names]
            keep &= np.isin(np.arange(self.n_parcels), idx)
        if networks is not None:
            bad = sorted(set(networks) - set(NETWORKS))
            if bad:
                raise InputError(self.name, "network", f"unknown network(s) {bad}; known: {list(NETWORKS)}")
            keep &= np.array([p.network in networks for p in self.parcels])
        if hemisphere is not None:
            if hemisphere not in ("LH", "RH"):
                raise InputError(self.name, "hemisphere", f"{hemisphere!r} is not LH or RH")
            keep &= np.array([p.hemisphere == hemisphere for p in self.parcels])
        if near is not None:
            dist = np.linalg.norm(self.centroids - np.asarray(near, np.float32), axis=1)
            if radius is None:
                near_mask = np.zeros(self.n_parcels, bool)
                near_mask[np.argmin(np.where(keep, dist, np.inf))] = True
            else:
                near_mask = dist <= radius
            keep &= near_mask
        return np.flatnonzero(keep)

    def vertices_of(self, parcel_indices) -> np.ndarray:
        """Sorted vertex indices belonging to the given 0-based parcels."""
        return np.sort(np.concatenate([self.parcel_vertices[i] for i in np.atleast_1d(parcel_indices)]))

    # ----------------------------------------------------------------- data layout
    def check_vertices(self, data: np.ndarray, source: str | Path, field: str = "vertices") -> None:
        if data.shape[-1] != self.n_vertices:
            raise InputError(source, field, f"{data.shape[-1]} vertices, atlas {self.name} has {self.n_vertices}")

    @functools.cached_property
    def _gather(self) -> tuple[np.ndarray, np.ndarray]:
        vmax = self.vmax
        index = np.zeros((self.n_parcels, vmax), np.int64)
        mask = np.zeros((self.n_parcels, vmax), bool)
        for i, v in enumerate(self.parcel_vertices):
            index[i, : v.size] = v
            mask[i, : v.size] = True
        return index, mask

    @property
    def group_mask(self) -> np.ndarray:
        """Boolean (P, Vmax): which padded slots hold a real vertex."""
        return self._gather[1]

    def group(self, data: np.ndarray, source: str | Path = "data") -> tuple[np.ndarray, np.ndarray]:
        """Vertex data (..., V) → padded parcel groups (..., P, Vmax) with zeros in padding, and the mask."""
        data = np.asarray(data)
        self.check_vertices(data, source)
        index, mask = self._gather
        grouped = np.take(data, index, axis=-1) * mask
        return grouped.astype(data.dtype, copy=False), mask

    def ungroup(self, grouped: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Inverse of :meth:`group`: (..., P, Vmax) → (..., V); medial-wall vertices get `fill`."""
        index, mask = self._gather
        out = np.full(grouped.shape[:-2] + (self.n_vertices,), fill, dtype=grouped.dtype)
        out[..., index[mask]] = grouped[..., mask]
        return out

    def parcellate(self, data: np.ndarray, source: str | Path = "data") -> np.ndarray:
        """Mean over each parcel's vertices: (..., V) → (..., P)."""
        grouped, mask = self.group(np.asarray(data, np.float32), source)
        return grouped.sum(-1) / mask.sum(-1)

    def to_vertices(self, parcel_values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Broadcast per-parcel values (..., P) back onto vertices (..., V) (for plotting)."""
        parcel_values = np.asarray(parcel_values)
        out = np.full(parcel_values.shape[:-1] + (self.n_vertices,), fill, dtype=np.float32)
        inside = self.labels > 0
        out[..., inside] = parcel_values[..., self.labels[inside] - 1]
        return out

    def __repr__(self) -> str:
        return f"Atlas({self.name!r}, parcels={self.n_parcels}, vertices={self.n_vertices})"


# --------------------------------------------------------------------- loaders
def fsaverage5_mesh() -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """fsaverage5 pial coordinates and faces (both hemispheres joined) from nilearn's bundled data."""
    from nilearn import datasets

    pial = datasets.load_fsaverage("fsaverage5")["pial"]
    left, right = pial.parts["left"], pial.parts["right"]
    coords = np.concatenate([left.coordinates, right.coordinates])
    faces = np.concatenate([left.faces, right.faces + left.coordinates.shape[0]])
    return coords, faces, (left.coordinates.shape[0], right.coordinates.shape[0])


def _brainspace_conte69_labels(n_parcels: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Schaefer labels on conte69 (both hemispheres) and the conte69 coordinates."""
    from brainspace.datasets import load_conte69, load_parcellation

    labels = np.asarray(load_parcellation("schaefer", scale=n_parcels, join=True)).astype(np.int32)
    lh, rh = load_conte69()
    coords = np.concatenate([np.asarray(lh.points), np.asarray(rh.points)])
    return labels, coords, int(np.asarray(lh.points).shape[0])


def project_labels(src_labels, src_coords, src_lh, dst_coords, dst_lh) -> np.ndarray:
    """Carry labels between surfaces by 3-D nearest neighbour, hemisphere by hemisphere."""
    from scipy.spatial import cKDTree

    out = np.zeros(dst_coords.shape[0], np.int32)
    for s_sl, d_sl in ((slice(0, src_lh), slice(0, dst_lh)), (slice(src_lh, None), slice(dst_lh, None))):
        _, nearest = cKDTree(src_coords[s_sl]).query(dst_coords[d_sl])
        out[d_sl] = src_labels[s_sl][nearest]
    return out


def read_parcel_table(path: str | Path = PARCEL_TABLE_100) -> list[Parcel]:
    with open(path) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [Parcel(int(r["index"]), r["name"], r["hemisphere"], r["network"]) for r in rows]


@functools.lru_cache(maxsize=4)
def _schaefer_cached(n_parcels: int) -> Atlas:
    if n_parcels not in (100, 200, 300, 400, 1000):
        raise InputError("Atlas.schaefer", "n_parcels", f"{n_parcels} not in (100, 200, 300, 400, 1000)")
    src_labels, src_coords, src_lh = _brainspace_conte69_labels(n_parcels)
    coords, faces, hemi = fsaverage5_mesh()
    labels = project_labels(src_labels, src_coords, src_lh, coords, hemi[0])
    name = f"schaefer{n_parcels}_fsaverage5"
    if n_parcels == 100:
        parcels = read_parcel_table()
    else:
        parcels = _inherit_networks(labels, n_parcels)
    return Atlas(name, parcels, labels, coords, faces, hemi)


def _inherit_networks(labels: np.ndarray, n_parcels: int) -> list[Parcel]:
    base = Atlas.schaefer(100)
    half = n_parcels // 2
    parcels = []
    for label in range(1, n_parcels + 1):
        hemi = "LH" if label <= half else "RH"
        members = base.labels[labels == label]
        members = members[members > 0]
        network = base.parcels[np.bincount(members).argmax() - 1].network if members.size else "Default"
        parcels.append(Parcel(label, f"Schaefer{n_parcels}_{hemi}_{label}", hemi, network))
    return parcels
