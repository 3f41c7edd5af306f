"""Figures of a stimulation experiment: dose-response curves and the stimulated vertices on fsaverage5."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmrilm.io import atomic_path

COLOURS = {"target": "tab:red", "random": "tab:grey", "other_category": "tab:blue"}


def _save(fig, out_png) -> Path:
    import matplotlib.pyplot as plt

    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return out_png


def plot_dose_response(summary: dict, out_png) -> Path:
    """Concept-word rate and probe SemScore against α, one line per condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for condition, result in summary["conditions"].items():
        alphas = [d["alpha"] for d in result["doses"]]
        for ax, key in zip(axes, ("concept_rate", "probe_semscore")):
            ax.plot(alphas, [d[key] for d in result["doses"]], "o-", color=COLOURS.get(condition), label=condition)
    axes[0].set(xlabel="α (SD units)", ylabel=f"captions naming '{summary['target']}'", ylim=(-0.02, 1.02))
    axes[1].set(xlabel="α (SD units)", ylabel="SemScore to probe")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"stimulation of the {summary['target']} patch (subject {summary['subject']})")
    fig.tight_layout()
    return _save(fig, out_png)


def plot_vertices(vertices: dict, atlas, out_png, target: str, other: str) -> Path:
    """Stimulated vertices on the inflated fsaverage5 surface (ventral and lateral views, both hemispheres).

    Labels: 1 = target patch, 2 = other category's patch, 3 = random vertices.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import datasets, plotting

    labels = np.zeros(atlas.n_vertices, np.float32)
    labels[vertices["random"]] = 3
    labels[vertices["other_category"]] = 2
    labels[vertices["target"]] = 1
    mesh = datasets.fetch_surf_fsaverage("fsaverage5")  # bundled with nilearn: no download
    n_left = atlas.hemi_sizes[0]
    halves = {"left": labels[:n_left], "right": labels[n_left:]}
    fig, axes = plt.subplots(2, 2, figsize=(9, 7), subplot_kw={"projection": "3d"})
    for col, hemi in enumerate(("left", "right")):
        for row, view in enumerate(("ventral", "lateral")):
            plotting.plot_surf_roi(mesh[f"infl_{hemi}"], halves[hemi], hemi=hemi, view=view,
                                   bg_map=mesh[f"sulc_{hemi}"], axes=axes[row, col], figure=fig,
                                   cmap="Set1", vmin=1, vmax=9, colorbar=False)
    fig.suptitle(f"stimulated vertices: red {target}, blue {other}, green random")
    return _save(fig, out_png)
