"""Surface maps of per-parcel values (e.g. reconstruction R²) on fsaverage5 with nilearn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmrilm.io import atomic_path


def plot_parcel_map(values, atlas, out_png, title: str = "", vmax: float | None = None) -> Path:
    """Save a 2×2 figure (left/right hemisphere, lateral/medial) of one value per parcel.

    Parameters
    ----------
    values : array-like, shape (P,)
    atlas : Atlas
        Must be an fsaverage5 atlas (the bundled meshes are fsaverage5).
    out_png : path
    vmax : float, optional
        Colour-scale limit (symmetric); default the largest |value|.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import datasets, plotting

    values = np.asarray(values, np.float32)
    vertex_values = atlas.to_vertices(values, fill=0.0)
    mesh = datasets.fetch_surf_fsaverage("fsaverage5")  # bundled with nilearn: no download
    n_left = atlas.hemi_sizes[0]
    halves = {"left": vertex_values[:n_left], "right": vertex_values[n_left:]}
    vmax = float(vmax if vmax is not None else max(np.abs(values).max(), 1e-6))
    fig, axes = plt.subplots(2, 2, figsize=(9, 7), subplot_kw={"projection": "3d"})
    for col, hemi in enumerate(("left", "right")):
        for row, view in enumerate(("lateral", "medial")):
            plotting.plot_surf_stat_map(mesh[f"infl_{hemi}"], halves[hemi], hemi=hemi, view=view,
                                        bg_map=mesh[f"sulc_{hemi}"], axes=axes[row, col], figure=fig,
                                        colorbar=(row == 0 and col == 1), vmax=vmax, symmetric_cbar=True,
                                        cmap="RdBu_r")
    fig.suptitle(title)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return out_png
