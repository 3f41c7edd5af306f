"""Generic readers for real fMRI runs: surface runs per hemisphere and volumetric runs.

Surface runs come as one file per hemisphere, either FreeSurfer MGH/MGZ (shape
``(n_vertices, 1, 1, T)``, what ``mri_vol2surf`` and NSD write) or GIFTI (``.func.gii`` / ``.gii``,
one data array per time point as fMRIPrep writes, or a single 2-D array). Volumetric runs are a 4-D
NIfTI image reduced to a label atlas with nilearn's ``NiftiLabelsMasker``. Confound tables and the
signal cleaning shared by every real-data reader live here too, so the rest and task readers clean
the same way.

Vertex counts are checked against the atlas hemisphere by hemisphere. FreeSurfer's icosahedral
surfaces are nested: the first 10242 vertices of fsaverage6 (40962) and fsaverage (163842) are the
fsaverage5 vertices, so a run on a finer fsaverage is decimated onto fsaverage5 by taking those
vertices (the same rule MNE uses for its ``ico5`` source space).

Examples
--------
>>> atlas = Atlas.schaefer(100)
>>> run = read_surface_run("sub-01.lh.func.gii", "sub-01.rh.func.gii", atlas)   # [T, 20484]
>>> parcels = atlas.parcellate(run)                                              # [T, 100]
>>> rois = read_volume_run("bold.nii.gz", "labels.nii.gz", confounds="confounds.tsv")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmrilm.errors import InputError, check_finite

# Vertices per hemisphere of FreeSurfer's nested icosahedral surfaces (fsaverage5, 6 and fsaverage).
ICO_VERTICES = (10242, 40962, 163842)
MGH_SUFFIXES = (".mgh", ".mgz")
GIFTI_SUFFIXES = (".gii",)


@dataclass
class CleanConfig:
    """How time series are cleaned (passed to ``nilearn.signal.clean``).

    Parameters
    ----------
    detrend : bool
        Remove linear trends.
    standardize : str or None
        ``"zscore_sample"`` (unit sample variance per column), ``"psc"``, or None.
    high_pass, low_pass : float or None
        Band-pass edges in Hz (None: no filter on that side). Needs the run's TR.
    filter : str
        ``"butterworth"`` or ``"cosine"`` (cosine drift regressors, high-pass only).
    """

    detrend: bool = True
    standardize: str | None = "zscore_sample"
    high_pass: float | None = None
    low_pass: float | None = None
    filter: str = "butterworth"


@dataclass(frozen=True)
class SurfaceHeader:
    """What a hemisphere file holds (dtype in native byte order), read without loading an MGH file's data."""

    path: Path
    n_vertices: int
    n_timepoints: int
    dtype: np.dtype


# --------------------------------------------------------------------- files
def existing_file(path: str | Path, field: str = "file") -> Path:
    """`path` as a Path, or InputError if it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, field, "missing")
    return path


def load_image(path: str | Path, field: str = "file"):
    """``nibabel.load`` with missing/unreadable files reported as InputError (data stays on disk)."""
    import nibabel as nib

    path = existing_file(path, field)
    try:
        return nib.load(path)
    except Exception as err:  # nibabel raises many types (ImageFileError, OSError, zlib, XML errors)
        raise InputError(path, field, f"unreadable image ({type(err).__name__}: {err})") from None


def _is_gifti(path: Path) -> bool:
    return path.name.lower().endswith(GIFTI_SUFFIXES)


def _is_mgh(path: Path) -> bool:
    return path.name.lower().endswith(MGH_SUFFIXES)


# --------------------------------------------------------------------- surface runs
def surface_header(path: str | Path) -> SurfaceHeader:
    """Vertex and time-point counts of one hemisphere file (MGH/MGZ header only; GIFTI parsed)."""
    path = existing_file(path)
    img = load_image(path)
    if _is_mgh(path):
        shape = tuple(int(s) for s in img.shape)
        if len(shape) < 3 or any(s != 1 for s in shape[1:3]):
            raise InputError(path, "shape", f"{shape} is not a surface map (n_vertices, 1, 1[, T])")
        dtype = np.dtype(img.get_data_dtype()).newbyteorder("=")  # MGH is big-endian on disk
        return SurfaceHeader(path, shape[0], shape[3] if len(shape) == 4 else 1, dtype)
    if _is_gifti(path):
        data = _gifti_vertices_by_time(img, path)
        return SurfaceHeader(path, data.shape[0], data.shape[1], data.dtype.newbyteorder("="))
    raise InputError(path, "format", f"not a surface file (expected one of {MGH_SUFFIXES + GIFTI_SUFFIXES})")


def _gifti_vertices_by_time(img, path: Path) -> np.ndarray:
    """GIFTI data as (n_vertices, T): one 1-D array per time point, or one 2-D array."""
    arrays = [np.asarray(d.data) for d in img.darrays]
    if not arrays:
        raise InputError(path, "darrays", "no data arrays")
    if len(arrays) == 1 and arrays[0].ndim == 2:
        data = arrays[0]
        # A 2-D array may be stored (V, T) or (T, V): the vertex axis is the one of icosahedral size.
        if data.shape[0] not in ICO_VERTICES and data.shape[1] in ICO_VERTICES:
            data = data.T
        return data
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 1:
        raise InputError(path, "darrays",
                         f"expected one 1-D array per time point, got shapes {sorted(shapes)}")
    return np.stack(arrays, axis=1)


def vertex_count_for(header: SurfaceHeader, expected: int | None, field: str) -> int:
    """Vertices to keep from a hemisphere: all, or the nested fsaverage5 subset of a finer fsaverage."""
    n = header.n_vertices
    if expected is None or n == expected:
        return n
    if n in ICO_VERTICES and expected in ICO_VERTICES and n > expected:
        return expected
    raise InputError(header.path, field, f"{n} vertices, the atlas hemisphere has {expected}")


def read_hemisphere(header: SurfaceHeader, n_keep: int) -> np.ndarray:
    """The first `n_keep` vertices of a hemisphere file as (n_keep, T), in the file's own dtype.

    MGH data are sliced on disk (only the kept vertices are read); the dtype is returned unchanged so
    callers that know a storage convention (NSD's int16 × 300) can undo it.
    """
    img = load_image(header.path)
    try:
        if _is_mgh(header.path):
            data = np.asarray(img.dataobj[:n_keep]).reshape(n_keep, -1)
        else:
            data = _gifti_vertices_by_time(img, header.path)[:n_keep]
    except (OSError, EOFError, ValueError) as err:  # truncated or corrupt data after a valid header
        raise InputError(header.path, "data", f"unreadable data ({type(err).__name__}: {err})") from None
    return data.astype(data.dtype.newbyteorder("="), copy=False)


def hemisphere_headers(lh: str | Path, rh: str | Path, atlas=None) -> tuple[SurfaceHeader, SurfaceHeader]:
    """Headers of both hemispheres, checked against each other and the atlas before any data is read."""
    headers = surface_header(lh), surface_header(rh)
    if headers[0].n_timepoints != headers[1].n_timepoints:
        raise InputError(headers[1].path, "time points", f"{headers[1].n_timepoints} time points, left "
                         f"hemisphere {headers[0].path.name} has {headers[0].n_timepoints}")
    if atlas is not None:
        for header, expected, hemi in zip(headers, atlas.hemi_sizes, ("left", "right"), strict=True):
            vertex_count_for(header, expected, f"vertices ({hemi} hemisphere)")
    return headers


def read_surface_run(lh: str | Path, rh: str | Path, atlas=None) -> np.ndarray:
    """Read a surface run (both hemispheres) as float32 ``[T, V]``, left hemisphere first.

    Parameters
    ----------
    lh, rh : path
        Left and right hemisphere files: MGH/MGZ ``(V_h, 1, 1, T)`` or GIFTI (one array per time point,
        or one 2-D array).
    atlas : Atlas, optional
        If given, each hemisphere must match ``atlas.hemi_sizes`` (a finer fsaverage is decimated to
        fsaverage5); parcel time series are then ``atlas.parcellate(run)``.

    Raises
    ------
    InputError
        Missing or unreadable files, hemispheres with different time points, a vertex count that does
        not match the atlas, NaN/inf values.
    """
    headers = hemisphere_headers(lh, rh, atlas)
    expected = atlas.hemi_sizes if atlas is not None else (None, None)
    parts = []
    for header, n in zip(headers, expected, strict=True):
        data = read_hemisphere(header, vertex_count_for(header, n, "vertices")).astype(np.float32)
        check_finite(data, header.path)
        parts.append(data)
    return np.ascontiguousarray(np.concatenate(parts).T)


def header_tr(path: str | Path) -> float | None:
    """Repetition time in seconds from an MGH (ms) or NIfTI (``xyzt_units``) header; None if absent."""
    img = load_image(path)
    path = Path(path)
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not float(zooms[3]) > 0:
        return None
    tr = float(zooms[3])
    if _is_mgh(path):
        return tr / 1000.0
    time_unit = img.header.get_xyzt_units()[1] if hasattr(img.header, "get_xyzt_units") else "sec"
    return tr / 1000.0 if time_unit == "msec" else tr / 1e6 if time_unit == "usec" else tr


# --------------------------------------------------------------------- confounds and cleaning
def read_confounds(path: str | Path, n_timepoints: int | None = None, columns: list[str] | None = None,
                   default_names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Read a confound table as float64 ``[T, C]`` and its column names.

    Accepts a whitespace/tab-separated text file with or without a header line (fMRIPrep's
    ``*_desc-confounds_timeseries.tsv`` has one, brainspace's example file has none). ``n/a`` entries
    (derivative columns have no value at the first volume) become 0.

    Parameters
    ----------
    n_timepoints : int, optional
        Rows required (the run's T).
    columns : list of str, optional
        Keep only these columns (needs a header or `default_names`).
    default_names : list of str, optional
        Names for a headerless file (default ``confound_00``, ``confound_01``, ...).
    """
    path = existing_file(path, "confounds")
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise InputError(path, "confounds", "empty file")
    has_header = not _is_number(lines[0][0])
    rows = lines[1:] if has_header else lines
    names = lines[0] if has_header else default_names or [f"confound_{i:02d}" for i in range(len(lines[0]))]
    bad = [i + 1 + has_header for i, row in enumerate(rows) if len(row) != len(names)]
    if bad:
        raise InputError(path, "confounds", f"{len(names)} columns expected, line {bad[0]} differs")
    try:
        values = np.array([[0.0 if v.lower() == "n/a" else float(v) for v in row] for row in rows],
                          np.float64)
    except ValueError as err:
        raise InputError(path, "confounds", f"non-numeric value ({err})") from None
    values = values.reshape(len(rows), len(names))
    if columns is not None:
        missing = sorted(set(columns) - set(names))
        if missing:
            raise InputError(path, "columns", f"no column(s) {missing}; has {names}")
        keep = [names.index(c) for c in columns]
        values, names = values[:, keep], list(columns)
    if n_timepoints is not None and values.shape[0] != n_timepoints:
        raise InputError(path, "time points",
                         f"{values.shape[0]} rows, the run has {n_timepoints} time points")
    check_finite(values, path, "confounds")
    return values, list(names)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.lower() == "n/a"
    return True


def clean_signals(data: np.ndarray, tr: float | None, confounds: np.ndarray | None = None,
                  config: CleanConfig | None = None) -> np.ndarray:
    """Clean ``[T, N]`` signals with ``nilearn.signal.clean``: confound regression, detrend, filter, z-score.

    Columns without variance (medial-wall vertices) come out as zeros, never NaN.
    """
    from nilearn import signal

    config = config or CleanConfig()
    filtering = config.high_pass is not None or config.low_pass is not None
    if filtering and not tr:
        raise InputError("clean", "tr", "band-pass filtering needs the repetition time")
    cleaned = signal.clean(np.asarray(data, np.float64), detrend=config.detrend,
                           standardize=config.standardize, confounds=confounds,
                           filter=config.filter if filtering else False, high_pass=config.high_pass,
                           low_pass=config.low_pass, t_r=tr)
    cleaned = cleaned.astype(np.float32)
    # nilearn leaves constant columns at 0 already; guard against a 0/0 from near-constant ones.
    cleaned[:, ~np.isfinite(cleaned).all(0)] = 0.0
    return cleaned


# --------------------------------------------------------------------- volumetric runs
def read_volume_run(img: str | Path, labels_img: str | Path, confounds: str | Path | None = None,
                    tr: float | None = None, clean: bool = True,
                    config: CleanConfig | None = None) -> np.ndarray:
    """Mean time series of each label of a volumetric atlas, float32 ``[T, n_labels]``.

    Parameters
    ----------
    img : path
        4-D NIfTI run.
    labels_img : path
        3-D integer label image (0 = background), resampled to the run's grid by nilearn.
    confounds : path, optional
        Confound table (see :func:`read_confounds`); regressed out when `clean` is True.
    tr : float, optional
        Repetition time in seconds (default: from the header).
    clean : bool
        Detrend, filter and z-score per `config` (plus confound regression); False returns raw means.
    config : CleanConfig, optional
        Cleaning settings (default :class:`CleanConfig`).

    Columns follow the sorted non-zero labels of `labels_img`; a label that falls outside the run's
    field of view is an InputError rather than a silently missing column.
    """
    import nibabel as nib
    from nilearn.maskers import NiftiLabelsMasker

    run, labels = load_image(img, "img"), load_image(labels_img, "labels_img")
    if len(run.shape) != 4:
        raise InputError(img, "shape", f"{run.shape} is not a 4-D run")
    if len(labels.shape) != 3:
        raise InputError(labels_img, "shape", f"{labels.shape} is not a 3-D label image")
    n_timepoints = int(run.shape[3])
    label_values = np.unique(np.asarray(labels.dataobj))
    label_values = label_values[label_values != 0]
    if label_values.size == 0:
        raise InputError(labels_img, "labels", "no non-zero label")
    tr = tr if tr is not None else header_tr(img)
    conf = read_confounds(confounds, n_timepoints)[0] if confounds is not None else None
    data = np.asarray(run.dataobj, np.float32)
    check_finite(data, img)
    # The masker only averages within labels; cleaning goes through clean_signals so volumetric and
    # surface runs are cleaned by the same code (nilearn's maskers also clean after averaging).
    masker = NiftiLabelsMasker(labels_img=str(labels_img), resampling_target="data", standardize=None)
    # Hand nilearn the array already in memory rather than letting it read the file a second time.
    series = masker.fit_transform(nib.Nifti1Image(data, run.affine, run.header))
    if series.shape != (n_timepoints, label_values.size):
        raise InputError(labels_img, "labels", f"{label_values.size} labels but {series.shape[1]} fall "
                         f"inside the run's field of view")
    return clean_signals(series, tr, conf, config) if clean else np.asarray(series, np.float32)
