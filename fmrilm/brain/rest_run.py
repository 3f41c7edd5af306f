"""A real resting-state run on fsaverage5: load, validate, clean, parcellate, import as a rest dataset.

The default run is the one brainspace ships in its wheel (``brainspace/datasets/preprocessing``):
MPI-LEMON subject sub-010188, session 2, eyes-open rest, already projected onto fsaverage5 —
``*.fsa5.{lh,rh}.mgz`` of shape ``(10242, 1, 1, 652)`` float32 — with a headerless confound table of
652 rows × 29 columns. The columns, read off their values (the file has no header), are: 6 orthonormal
zero-mean components (CompCor-like), 6 motion parameters (3 rotations in rad, 3 translations in mm),
their 6 backward differences, 8 one-hot spike regressors (scrubbed volumes), a constant, and Legendre
polynomials of order 1 and 2 over the run. The MGH header stores TR = 1000 ms, which does not match
the LEMON rest protocol (TR 1.4 s, 657 volumes of which 652 remain here); the bundled run therefore
defaults to 1.4 s. Any other run is read with the same code (MGH/MGZ or GIFTI per hemisphere, see
:mod:`fmrilm.brain.surface_io`), its TR taken from the argument or the header.

Cleaning is ``nilearn.signal.clean`` per vertex (confound regression, detrend, optional band-pass,
``zscore_sample``); parcel series are the means over each Schaefer parcel, z-scored again so every
column has unit variance. Medial-wall vertices carry no signal and come out as zeros.

Usage::

    from fmrilm.brain.rest_run import load_rest_run, import_rest_run
    run = load_rest_run()                       # brainspace run: timeseries [652, 100]
    import_rest_run(run, "runs/real_rest")      # rest dataset, S = 1, with vertex_timeseries
    import_configured_run(RestImportConfig(), "runs/real_rest")   # the same, as the pipeline's real_rest stage
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmrilm.brain.atlas import Atlas
from fmrilm.brain.store import DatasetWriter
from fmrilm.brain.surface_io import (
    CleanConfig,
    clean_signals,
    header_tr,
    hemisphere_headers,
    read_confounds,
    read_surface_run,
)
from fmrilm.errors import InputError

BRAINSPACE_RUN = "sub-010188_ses-02_task-rest_acq-AP_run-01"
BRAINSPACE_TR = 1.4  # seconds: the MPI-LEMON rest protocol (the MGH header's 1000 ms is not it)
BRAINSPACE_CONFOUND_NAMES = (
    [f"compcor_{i:02d}" for i in range(6)]
    + ["rot_x", "rot_y", "rot_z", "trans_x", "trans_y", "trans_z"]
    + [f"{m}_derivative1" for m in ("rot_x", "rot_y", "rot_z", "trans_x", "trans_y", "trans_z")]
    + [f"motion_outlier_{i:02d}" for i in range(8)]
    + ["constant", "legendre_1", "legendre_2"]
)


@dataclass
class RestImportConfig:
    """Which surface run to import (the pipeline's ``real_rest`` stage; all None = the brainspace run).

    Attributes
    ----------
    lh, rh : str or None
        Hemisphere files (MGH/MGZ or GIFTI); both or neither.
    confounds : str or None
        Confound table (default for the brainspace run: its bundled table).
    tr : float or None
        Repetition time in seconds (default: header, 1.4 s for the brainspace run).
    """

    lh: str | None = None
    rh: str | None = None
    confounds: str | None = None
    tr: float | None = None


@dataclass
class RestRun:
    """One cleaned resting-state run.

    Attributes
    ----------
    timeseries : ndarray, float32 [T, P]
        Parcel time series (unit sample variance per parcel when standardized).
    vertex_timeseries : ndarray, float32 [T, V]
        Cleaned vertex time series, left hemisphere first (medial wall = 0).
    tr : float
        Repetition time in seconds.
    source : str
        ``"brainspace"`` for the bundled run, otherwise the left-hemisphere path.
    confound_names : list of str
        Regressed confounds (empty if none).
    subject : str
        BIDS subject label from the file name (``sub-0001`` if there is none).
    atlas : dict
        ``Atlas.describe()`` of the parcellation.
    cleaning : dict or None
        The :class:`CleanConfig` applied, None for a raw run.
    """

    timeseries: np.ndarray
    vertex_timeseries: np.ndarray
    tr: float
    source: str
    confound_names: list[str]
    subject: str
    atlas: dict
    cleaning: dict | None


def brainspace_run_paths() -> tuple[Path, Path, Path]:
    """Left, right and confound files of the run bundled with brainspace."""
    import brainspace.datasets

    root = Path(brainspace.datasets.__file__).parent / "preprocessing"
    return (root / f"{BRAINSPACE_RUN}.fsa5.lh.mgz", root / f"{BRAINSPACE_RUN}.fsa5.rh.mgz",
            root / f"{BRAINSPACE_RUN}_confounds.txt")


def load_rest_run(lh: str | Path | None = None, rh: str | Path | None = None,
                  confounds: str | Path | None = None, atlas: Atlas | None = None, tr: float | None = None,
                  clean: bool = True, config: CleanConfig | None = None,
                  confound_columns: list[str] | None = None) -> RestRun:
    """Load a surface resting-state run, clean it and parcellate it.

    Parameters
    ----------
    lh, rh : path, optional
        Hemisphere files (MGH/MGZ or GIFTI). Both None: the brainspace run (with its confounds).
    confounds : path, optional
        Confound table with one row per time point (header optional). For the brainspace run it
        defaults to the bundled file.
    atlas : Atlas, optional
        Default ``Atlas.schaefer(100)``.
    tr : float, optional
        Repetition time in seconds; default from the header (1.4 s for the brainspace run).
    clean : bool
        Apply confound regression and `config`; False keeps raw values (still parcellated).
    config : CleanConfig, optional
        Detrend / band-pass / standardize settings.
    confound_columns : list of str, optional
        Regress only these confound columns.

    Raises
    ------
    InputError
        Only one hemisphere given, missing/unreadable files, vertex counts that do not match the
        atlas, time points that differ between hemispheres and confounds, NaN/inf, no TR available.
    """
    if (lh is None) != (rh is None):
        raise InputError(lh or rh, "lh/rh", "give both hemispheres, or neither for the brainspace run")
    bundled = lh is None
    if bundled:
        lh, rh, default_confounds = brainspace_run_paths()
        confounds = default_confounds if confounds is None else confounds
    atlas = atlas if atlas is not None else Atlas.schaefer(100)
    config = config or CleanConfig()
    n_timepoints = hemisphere_headers(lh, rh, atlas)[0].n_timepoints
    conf, names = None, []
    if confounds is not None:
        bundled_confounds = bundled and Path(confounds) == brainspace_run_paths()[2]
        default_names = BRAINSPACE_CONFOUND_NAMES if bundled_confounds else None
        conf, names = read_confounds(confounds, n_timepoints, confound_columns, default_names)
    tr = tr if tr is not None else BRAINSPACE_TR if bundled else header_tr(lh)
    if not tr or tr <= 0:
        raise InputError(lh, "tr", "the header holds no repetition time; pass tr= (seconds)")

    vertices = read_surface_run(lh, rh, atlas)
    if clean:
        vertices = clean_signals(vertices, tr, conf, config)
    parcels = atlas.parcellate(vertices, lh)
    if clean and config.standardize == "zscore_sample":
        parcels = zscore_columns(parcels)
    match = re.search(r"sub-[A-Za-z0-9]+", Path(lh).name)
    return RestRun(timeseries=parcels.astype(np.float32), vertex_timeseries=vertices, tr=float(tr),
                   source="brainspace" if bundled else str(lh), confound_names=names if clean else [],
                   subject=match.group(0) if match else "sub-0001", atlas=atlas.describe(),
                   cleaning=dataclasses.asdict(config) if clean else None)


def import_configured_run(cfg: RestImportConfig, out: str | Path, overwrite: bool = False) -> Path:
    """Load, clean and parcellate the run `cfg` names and write it as a rest dataset at `out`."""
    return import_rest_run(load_rest_run(cfg.lh, cfg.rh, cfg.confounds, tr=cfg.tr), out, overwrite=overwrite)


def zscore_columns(x: np.ndarray) -> np.ndarray:
    """Z-score columns with the sample standard deviation; constant columns become 0."""
    centred = x - x.mean(0)
    std = centred.std(0, ddof=1)
    return centred / np.where(std > 0, std, 1.0)


def import_rest_run(run: RestRun, out: str | Path, overwrite: bool = False) -> Path:
    """Write `run` as a rest dataset (S = 1) readable with ``Dataset(out, kind="rest")``.

    Arrays ``timeseries`` [1, T, P] and ``vertex_timeseries`` [1, T, V]; table ``subjects.jsonl``
    with unknown phenotype fields as null; manifest extras ``tr``, ``n_subjects``, ``n_timepoints``,
    ``source``, ``confound_names``.
    """
    n_timepoints = run.timeseries.shape[0]
    if run.vertex_timeseries.shape[0] != n_timepoints:
        raise InputError(run.source, "vertex_timeseries", f"{run.vertex_timeseries.shape[0]} time points, "
                         f"timeseries has {n_timepoints}")
    config = {"source": run.source, "tr": run.tr, "cleaning": run.cleaning,
              "confound_names": run.confound_names}
    with DatasetWriter(out, "rest", run.atlas, config, seed=0, overwrite=overwrite) as writer:
        writer.write_array("timeseries", run.timeseries[None].astype(np.float32))
        writer.write_array("vertex_timeseries", run.vertex_timeseries[None].astype(np.float32))
        writer.write_table("subjects", [{"subject": run.subject, "age": None, "sex": None, "diagnosis": None,
                                         "site": None}])
        return writer.finish(tr=run.tr, n_subjects=1, n_timepoints=n_timepoints, source=run.source,
                             confound_names=run.confound_names)
