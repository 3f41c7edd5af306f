"""Figures of a stimulation experiment: dose-response curves of both readers, and the patches on fsaverage5.

As in nilearn's surface plots, each ``plot_*`` returns its :class:`matplotlib.figure.Figure` and
also saves it when given `output_file`. Figures are built with ``Figure`` directly, never through
pyplot's global state, so no backend is chosen here (see :mod:`fmrilm.tokenizer.plotting`).
"""

from __future__ import annotations

import numpy as np

from fmrilm.tokenizer.plotting import save_figure, surface_halves

COLOURS = {"target": "tab:red", "control_patches": "tab:green", "other_category": "tab:blue"}
LABELS = {"target": "target patch", "control_patches": "control patches (mean)", "other_category": "other category"}


def _curves(ax, reader: dict, key: str, per_patch: bool) -> None:
    """One line with its interval band per condition; thin lines for the single control patches."""
    for condition, result in reader["conditions"].items():
        doses = result["doses"]
        alphas = [d["alpha"] for d in doses]
        lo, hi = zip(*(d[f"{key}_ci"] for d in doses))
        colour = COLOURS.get(condition)
        ax.fill_between(alphas, lo, hi, color=colour, alpha=0.15, linewidth=0)
        ax.plot(alphas, [d[key] for d in doses], "o-", color=colour, label=LABELS.get(condition, condition))
        if per_patch and "per_patch" in result:
            ax.plot(alphas, np.asarray(result["per_patch"]), "-", color=colour, alpha=0.25, linewidth=0.8)


def _caption(reader: dict) -> str:
    spec, diff = reader["specificity"], reader["rise_difference_vs_controls"]
    ratio = f"{spec['value']:.2f}×" if spec["value"] is not None else "undefined"
    lo, hi = diff["ci"]
    return f"specificity {ratio}; rise − control rise {diff['value']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def plot_dose_response(summary: dict, *, output_file=None):
    """Concept rate against α for the LM and the ideal observer, and the LM's probe SemScore.

    Parameters
    ----------
    summary : dict
        ``stimulation.json``.
    output_file : str or pathlib.Path or None, default=None
        If given, the figure is also saved there (atomically; PNG unless the extension says otherwise).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.2))
    axes = fig.subplots(1, 3)
    target = summary["target"]
    panels = ((summary["lm"], "concept_rate", f"LM captions naming '{target}'", True),
              (summary["ideal_observer"], "concept_rate", f"ideal observer: decoded stimulus names '{target}'", True),
              (summary["lm"], "probe_semscore", f"LM SemScore to '{summary['probe']}'", False))
    for ax, (reader, key, ylabel, is_rate) in zip(axes, panels):
        _curves(ax, reader, key, per_patch=is_rate)
        ax.set(xlabel="α (SD units)", ylabel=ylabel)
        if is_rate:
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(_caption(reader), fontsize=8)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"stimulation of the {target} patch (subject {summary['subject']}; {summary['interval']:.0%} "
                 f"bootstrap bands; {summary['n_scans']} scans, {summary['n_control_patches']} control patches × "
                 f"{summary['n_control_scans']} scans)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, output_file)
    return fig


def plot_vertices(patches: dict, atlas, target: str, other: str, *, output_file=None):
    """The target, other-category and control patches on the inflated fsaverage5 surface
    (ventral, lateral and medial views of both hemispheres).

    Parameters
    ----------
    patches : dict
        ``target``, ``other_category`` (vertex indices) and ``control_patches`` (list of them).
    atlas : Atlas
        An fsaverage5 atlas (the bundled meshes are fsaverage5).
    target, other : str
        Category names for the title.
    output_file : str or pathlib.Path or None, default=None
        If given, the figure is also saved there (atomically; PNG unless the extension says otherwise).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure
    from nilearn import plotting

    # Set1 colours: 1 red (target), 2 blue (other category), 3 green (control patches).
    labels = np.zeros(atlas.n_vertices, np.float32)
    for vertices in patches["control_patches"]:
        labels[vertices] = 3
    labels[patches["other_category"]] = 2
    labels[patches["target"]] = 1
    mesh, halves = surface_halves(labels, atlas)
    views = ("ventral", "lateral", "medial")
    fig = Figure(figsize=(8, 9))
    axes = fig.subplots(len(views), 2, subplot_kw={"projection": "3d"})
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.95, wspace=0, hspace=0)
    for col, hemi in enumerate(("left", "right")):
        for row, view in enumerate(views):
            plotting.plot_surf_roi(mesh[f"infl_{hemi}"], halves[hemi], hemi=hemi, view=view,
                                   bg_map=mesh[f"sulc_{hemi}"], axes=axes[row, col], figure=fig,
                                   cmap="Set1", vmin=1, vmax=9, threshold=0.5, colorbar=False)
    fig.suptitle(f"red: {target} patch; blue: {other} patch; green: {len(patches['control_patches'])} "
                 "control patches of the same size and shape")
    save_figure(fig, output_file)
    return fig
