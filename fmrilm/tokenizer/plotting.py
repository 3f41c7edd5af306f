"""Surface maps of per-parcel values (e.g. reconstruction R²) on fsaverage5 with nilearn.

As in nilearn's surface plots (``nilearn.plotting.plot_surf_stat_map``), each ``plot_*`` returns its
:class:`matplotlib.figure.Figure` and also saves it when given `output_file`. Figures are built with
``Figure`` directly, never through pyplot's global state: nothing has to be closed, and no backend
is chosen here (library code must not switch the caller's backend). ``Figure.savefig`` picks the
canvas for the file's format itself (Agg for PNG), so saving works headless under any backend; the
CLI and stages that save figures therefore need neither ``matplotlib.use`` nor ``MPLBACKEND`` (which
would override a user's own choice). Importing ``nilearn.plotting`` imports pyplot, whose automatic
backend choice is Agg where there is no display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmrilm.io import atomic_path


def save_figure(fig, output_file, dpi: int = 80) -> None:
    """Write `fig` to `output_file` atomically, if it is given (nilearn's ``save_figure_if_needed``).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    output_file : str or pathlib.Path or None
        Format from the extension (``.png``, ``.pdf``, ``.svg``; PNG when there is none). Nothing is
        written when None.
    dpi : int, default=80
    """
    if output_file is None:
        return
    output_file = Path(output_file)
    # The temporary file's suffix is ".tmp", so the format has to be named rather than inferred.
    fmt = output_file.suffix.lstrip(".").lower() or "png"
    with atomic_path(output_file) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)


def surface_halves(vertex_values, atlas) -> tuple[dict, dict]:
    """The fsaverage5 meshes and `vertex_values` split into ``{"left": ..., "right": ...}``.

    Parameters
    ----------
    vertex_values : array-like, shape (V,)
        One value per vertex of `atlas`, left hemisphere first.
    atlas : Atlas
        An fsaverage5 atlas (the bundled meshes are fsaverage5).

    Returns
    -------
    mesh : dict
        nilearn's fsaverage5 bunch (``infl_left``, ``sulc_left``, ...).
    halves : dict
        The per-hemisphere slices of `vertex_values`.
    """
    from nilearn import datasets

    mesh = datasets.fetch_surf_fsaverage("fsaverage5")  # bundled with nilearn: no download
    vertex_values = np.asarray(vertex_values)
    n_left = atlas.hemi_sizes[0]
    return mesh, {"left": vertex_values[:n_left], "right": vertex_values[n_left:]}


def plot_parcel_map(values, atlas, *, title: str = "", vmax: float | None = None, output_file=None):
    """A 2×2 figure (left/right hemisphere, lateral/medial) of one value per parcel.

    Parameters
    ----------
    values : array-like, shape (P,)
        One value per parcel of `atlas`; vertices outside every parcel are drawn as 0.
    atlas : Atlas
        Must be an fsaverage5 atlas (the bundled meshes are fsaverage5).
    title : str, default=""
    vmax : float, optional
        Colour-scale limit (symmetric); default the largest |value|.
    output_file : str or pathlib.Path or None, default=None
        If given, the figure is also saved there (atomically; PNG unless the extension says otherwise).

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    `title`, `vmax` and `output_file` are keyword-only so that a call written for the old
    ``plot_parcel_map(values, atlas, out_png, title)`` fails loudly instead of titling the map with a path.
    """
    from matplotlib.figure import Figure
    from nilearn import plotting

    values = np.asarray(values, np.float32)
    mesh, halves = surface_halves(atlas.to_vertices(values, fill=0.0), atlas)
    vmax = float(vmax if vmax is not None else max(np.abs(values).max(), 1e-6))
    fig = Figure(figsize=(9, 7))
    axes = fig.subplots(2, 2, subplot_kw={"projection": "3d"})
    for col, hemi in enumerate(("left", "right")):
        for row, view in enumerate(("lateral", "medial")):
            plotting.plot_surf_stat_map(mesh[f"infl_{hemi}"], halves[hemi], hemi=hemi, view=view,
                                        bg_map=mesh[f"sulc_{hemi}"], axes=axes[row, col], figure=fig,
                                        colorbar=(row == 0 and col == 1), vmax=vmax, symmetric_cbar=True,
                                        cmap="RdBu_r")
    fig.suptitle(title)
    save_figure(fig, output_file)
    return fig
