"""The stimulated vertex sets: the localizer patch of a category and control patches of its size and shape.

The target patch is the `n_vertices` top of the smoothed localizer contrast, which on fsaverage5 is
a few compact blobs, typically one per hemisphere (the faces patch of the demo world: 204 + 83
vertices and four fragments of 1–6). A control patch copies that layout: one geodesic disc per
connected component of the target, of the same vertex count and in the same hemisphere, grown from a
random seed. A disc is the `size` cortical vertices nearest to its seed along the mesh edges
(Dijkstra on the pial edge lengths, within cortex), so the count is exact and the shape the most
compact a patch of that size can take. The alternative, the top vertices of a smoothed random
delta, cannot give the count: after the `smoothing_steps` (5 in the demo) a delta reaches about
5 rings, ~90 vertices, fewer than a 300-vertex patch.

Every control vertex lies at least ``control_min_distance_mm`` (geodesic, along the mesh) from the
target patch, and the discs of one control keep a vertex ring between them, so a control patch has
as many components as the target; control patches may overlap each other and the other category's
patch.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, dijkstra

from fmrilm.errors import InputError

MAX_SEED_DRAWS = 500  # per disc; a hemisphere holds ~9,000 cortical vertices, so failures mean a bad config


def cortex_graph(atlas) -> sp.csr_matrix:
    """Mesh edges between cortical vertices, weighted by their pial length (mm); other vertices isolated."""
    edges = atlas.adjacency.tocoo()
    cortex = atlas.labels > 0
    keep = cortex[edges.row] & cortex[edges.col]
    rows, cols = edges.row[keep], edges.col[keep]
    length = np.linalg.norm(atlas.coords[rows] - atlas.coords[cols], axis=1)
    return sp.csr_matrix((length, (rows, cols)), shape=edges.shape)


def geodesic_disc(graph: sp.csr_matrix, seed: int, size: int) -> np.ndarray | None:
    """The `size` vertices nearest to `seed` along `graph` (seed first), or None if fewer are reachable."""
    distance = dijkstra(graph, indices=int(seed))
    order = np.argsort(distance, kind="stable")[: int(size)]
    return order if np.isfinite(distance[order]).all() and order.size == size else None


def components(vertices: np.ndarray, atlas) -> list[np.ndarray]:
    """Connected pieces of a vertex set on the mesh, largest first."""
    vertices = np.asarray(vertices)
    _, label = connected_components(atlas.adjacency[vertices][:, vertices], directed=False)
    pieces = [vertices[label == k] for k in range(label.max() + 1)]
    return sorted(pieces, key=len, reverse=True)


def control_patches(target: np.ndarray, atlas, n_patches: int, min_distance_mm: float,
                    rng: np.random.Generator) -> tuple[list[np.ndarray], list[list[int]]]:
    """Random patches with the target's component sizes and hemispheres, away from the target.

    Parameters
    ----------
    target : ndarray of int
        The target patch's vertices.
    n_patches : int
    min_distance_mm : float
        Smallest geodesic distance allowed between a control vertex and the target patch (0: no
        shared vertex).
    rng : numpy.random.Generator

    Returns
    -------
    patches : list of ndarray of int
        Each sorted, with ``len(target)`` vertices.
    seeds : list of list of int
        The seed vertex of each disc, per patch.

    Raises
    ------
    InputError
        If a disc cannot be placed (the distance leaves too little cortex in a hemisphere).
    """
    graph = cortex_graph(atlas)
    cortex = atlas.labels > 0
    hemisphere = atlas.hemispheres
    # Multi-source Dijkstra: each vertex's distance to the nearest target vertex.
    to_target = dijkstra(graph, indices=np.asarray(target), min_only=True)
    far = cortex & (to_target > min_distance_mm)  # edges have positive length: 0 mm still excludes the target
    pieces = components(target, atlas)
    patches, seeds = [], []
    for _ in range(n_patches):
        allowed, discs, disc_seeds = far.copy(), [], []
        for piece in pieces:
            candidates = np.flatnonzero(allowed & (hemisphere == hemisphere[piece[0]]))
            disc = None
            for seed in rng.choice(candidates, min(MAX_SEED_DRAWS, candidates.size), replace=False):
                disc = geodesic_disc(graph, seed, piece.size)
                if disc is not None and allowed[disc].all():
                    break
                disc = None
            if disc is None:
                raise InputError("stimulation config", "control_min_distance_mm",
                                 f"{min_distance_mm} mm: no room for a {piece.size}-vertex disc in hemisphere "
                                 f"{int(hemisphere[piece[0]])} away from the target patch")
            discs.append(disc)
            disc_seeds.append(int(disc[0]))
            # The disc and its neighbours are closed to the next discs: they stay separate components.
            allowed[disc] = False
            allowed[atlas.adjacency[disc].indices] = False
        patches.append(np.sort(np.concatenate(discs)))
        seeds.append(disc_seeds)
    return patches, seeds


def describe_patch(vertices: np.ndarray, atlas) -> dict:
    """Size and shape of a patch: vertices, connected components, Schaefer parcels touched (what the
    region-wise tokenizer sees) and the share of vertices on its boundary (1.0 for scattered vertices)."""
    vertices = np.asarray(vertices)
    outside = np.ones(atlas.n_vertices, np.float32)
    outside[vertices] = 0.0
    outside_neighbours = atlas.adjacency[vertices] @ outside
    return {"n_vertices": int(vertices.size), "n_components": len(components(vertices, atlas)),
            "n_parcels": int(np.unique(atlas.labels[vertices]).size),
            "boundary_fraction": float(np.mean(outside_neighbours > 0))}


def select_patches(data, atlas, cfg, rng: np.random.Generator) -> dict:
    """Target, other-category and control patches of a stimulation config.

    Returns
    -------
    dict
        ``target`` and ``other_category`` (vertex arrays), ``control_patches`` (list of arrays) and
        ``control_seeds`` (seed vertices per control patch).
    """
    from fmrilm.brain.encoding_model import smooth, smoothing_operator
    from fmrilm.brain.localizer import localizer_contrast, top_vertices

    betas, categories = data.localizer(cfg.subject)
    cfg.validate(categories)
    cortex = atlas.labels > 0
    # The usual spatial smoothing of a localizer map: unsmoothed, the top vertices of a noisy
    # contrast scatter over many parcels.
    op = smoothing_operator(atlas)

    def patch(category: str) -> np.ndarray:
        contrast = smooth(localizer_contrast(betas, categories, category), op, cfg.smoothing_steps)
        return np.sort(top_vertices(contrast, cfg.n_vertices, cortex))

    target = patch(cfg.target)
    controls, seeds = control_patches(target, atlas, cfg.n_control_patches, cfg.control_min_distance_mm, rng)
    return {"target": target, "other_category": patch(cfg.other_category), "control_patches": controls,
            "control_seeds": seeds}
