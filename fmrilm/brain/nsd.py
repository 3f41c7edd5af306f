"""Import NSD-style single-trial betas on fsaverage into a task dataset.

Inputs
------
``betas_dir``
    One pair of files per scan session, as NSD's ``nsddata_betas/ppdata/subjNN/fsaverage/<glm>/``:
    ``lh.betas_sessionNN.mgh`` and ``rh.betas_sessionNN.mgh`` (``.mgz`` also read), each of shape
    ``(n_vertices_hemi, 1, 1, n_trials)``. Betas stored as int16 (NSD's ``round(beta × 300)``) are
    divided by 300; float betas are used as they are. fsaverage (163842 per hemisphere) and
    fsaverage6 betas are decimated to the atlas's fsaverage5 by the nested-icosahedron rule
    (see :mod:`fmrilm.brain.surface_io`).
trial table (TSV, or CSV if the name ends in ``.csv``)
    One row per trial with integer columns ``session`` (1-based, the NN of the file name),
    ``trial`` (1-based position of the trial within the session, i.e. along the MGH's 4th axis)
    and ``stimulus`` (the stimulus id, matched to the captions' ``image_id``). Extra columns are
    ignored. NSD distributes the design as ``nsd_expdesign.mat``, which we do not read; make the table
    once from it and ``nsd_stim_info_merged.csv`` (COCO ids), e.g.::

        d = scipy.io.loadmat("nsd_expdesign.mat")
        nsd73k = d["subjectim"][subj - 1, d["masterordering"][0] - 1]     # 1-based 73k ids per trial
        coco = pandas.read_csv("nsd_stim_info_merged.csv")["cocoId"].to_numpy()[nsd73k - 1]
        i = numpy.arange(coco.size)                                     # 30000 trials, 750 per session
        pandas.DataFrame({"session": i // 750 + 1, "trial": i % 750 + 1, "stimulus": coco}) \\
            .to_csv("trials.tsv", sep="\\t", index=False)

    (keep only the sessions the subject completed).
captions JSON (COCO style)
    ``{"annotations": [{"image_id": int, "caption": str}, ...], "images": [{"id": int, "file_name": str}]}``;
    ``images`` is optional. COCO's ``captions_train2017.json`` and ``captions_val2017.json`` merged work.

Output: a task dataset (see ``fmrilm.brain.store``) with ``betas`` [N, V] z-scored per session per vertex
(sample standard deviation, the NSD convention), ``trial_stimulus``/``trial_subject``/``trial_session``/
``trial_repeat``, ``stimuli.jsonl`` (captions; no QA, categories or scene graphs for real data) and
``subjects.jsonl``. Sessions are streamed one at a time into the memmapped ``betas``.

Usage::

    from fmrilm.brain.nsd import import_nsd, average_repeats
    out = import_nsd("nsd/subj01/fsaverage/betas_fithrf_GLMdenoise_RR", "trials.tsv", "captions.json",
                     "runs/nsd_subj01", subject="subj01")
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from fmrilm.brain.atlas import Atlas
from fmrilm.brain.store import DatasetWriter
from fmrilm.brain.surface_io import SurfaceHeader, existing_file, hemisphere_headers, read_hemisphere
from fmrilm.errors import InputError, check_finite
from fmrilm.io import read_json

NSD_INT16_SCALE = 300.0
TRIAL_COLUMNS = ("session", "trial", "stimulus")


@dataclass(frozen=True)
class Session:
    """One validated session: its number, hemisphere headers and where its trials go in the output."""

    number: int
    headers: tuple[SurfaceHeader, SurfaceHeader]
    offset: int

    @property
    def n_trials(self) -> int:
        return self.headers[0].n_timepoints


# --------------------------------------------------------------------- inputs
def read_trials(path: str | Path) -> dict[str, np.ndarray]:
    """The trial table as int64 arrays ``session``, ``trial``, ``stimulus``, sorted by (session, trial)."""
    path = existing_file(path, "trials_table")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="," if path.suffix.lower() == ".csv" else "\t")
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in TRIAL_COLUMNS if c not in header]
        if missing:
            raise InputError(path, "columns",
                             f"missing {missing}; has {header} (expected {list(TRIAL_COLUMNS)})")
        values = []
        for lineno, row in enumerate(reader, 2):
            row = {k.strip(): v for k, v in row.items() if k is not None}
            try:
                values.append([int(row[c]) for c in TRIAL_COLUMNS])
            except (TypeError, ValueError):
                raise InputError(path, f"line {lineno}",
                                 f"non-integer value in {[row.get(c) for c in TRIAL_COLUMNS]}") from None
    if not values:
        raise InputError(path, "rows", "no trials")
    table = np.array(values, np.int64)
    table = table[np.lexsort((table[:, 1], table[:, 0]))]
    return dict(zip(TRIAL_COLUMNS, table.T, strict=True))


def read_captions(path: str | Path) -> tuple[dict[int, list[str]], dict[int, str]]:
    """Captions per image id, and file names per image id (empty without an ``images`` list)."""
    doc = read_json(path)
    annotations = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(annotations, list):
        raise InputError(path, "annotations", "missing: expected {'annotations': [{'image_id', 'caption'}]}")
    captions: dict[int, list[str]] = {}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) or "image_id" not in ann:
            raise InputError(path, f"annotations[{i}]", "needs 'image_id' and a string 'caption'")
        captions.setdefault(int(ann["image_id"]), []).append(ann["caption"].strip())
    files = {int(img["id"]): str(img.get("file_name", "")) for img in doc.get("images", []) if "id" in img}
    return captions, files


def session_files(betas_dir: Path, session: int) -> tuple[Path, Path]:
    """The lh/rh beta files of one session (``.mgh`` preferred, ``.mgz`` accepted)."""
    found = []
    for hemi in ("lh", "rh"):
        candidates = [betas_dir / f"{hemi}.betas_session{session:02d}{ext}" for ext in (".mgh", ".mgz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise InputError(candidates[0], "file", f"missing: session {session} is in the trial table")
        found.append(path)
    return found[0], found[1]


def plan_sessions(betas_dir: Path, trials: dict[str, np.ndarray], trials_path: Path,
                  atlas: Atlas) -> list[Session]:
    """Check every session's headers against the atlas and the trial table; nothing is read but headers."""
    plan, offset = [], 0
    for number in np.unique(trials["session"]):
        headers = hemisphere_headers(*session_files(betas_dir, int(number)), atlas)
        numbers = trials["trial"][trials["session"] == number]
        n_trials = headers[0].n_timepoints
        if numbers.size != n_trials or not np.array_equal(numbers, np.arange(1, n_trials + 1)):
            raise InputError(trials_path, f"session {number}", f"{numbers.size} trials numbered "
                             f"{numbers.min()}..{numbers.max()}, but {headers[0].path.name} holds trials "
                             f"1..{n_trials} (each exactly once)")
        plan.append(Session(int(number), headers, offset))
        offset += n_trials
    return plan


# --------------------------------------------------------------------- betas
def read_session_betas(session: Session, atlas: Atlas) -> np.ndarray:
    """One session's betas as float32 ``[n_trials, V]``, int16 storage undone, checked finite."""
    parts = []
    for header, n_keep in zip(session.headers, atlas.hemi_sizes, strict=True):
        data = read_hemisphere(header, n_keep)
        scale = 1.0 / NSD_INT16_SCALE if data.dtype == np.int16 else 1.0
        data = data.astype(np.float32) * np.float32(scale)
        check_finite(data, header.path, "betas")
        parts.append(data)
    return np.ascontiguousarray(np.concatenate(parts).T)


def zscore_trials(betas: np.ndarray) -> np.ndarray:
    """Z-score each vertex over the trials of one session (sample std); constant vertices become 0."""
    centred = betas - betas.mean(0, dtype=np.float64).astype(np.float32)
    std = centred.std(0, ddof=1, dtype=np.float64).astype(np.float32)
    return centred / np.where(std > 0, std, np.float32(1.0))


def repeat_index(subject: np.ndarray, stimulus: np.ndarray) -> np.ndarray:
    """k-th presentation (0-based) of each trial's stimulus to its subject, in trial order."""
    keys = np.stack([subject, stimulus], 1)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    repeat = np.empty_like(inverse)
    repeat[order] = np.arange(inverse.size) - starts
    return repeat


# --------------------------------------------------------------------- import
def import_nsd(betas_dir: str | Path, trials_table: str | Path, captions_json: str | Path, out: str | Path,
               subject: str = "subj01", atlas: Atlas | None = None, sessions: list[int] | None = None,
               overwrite: bool = False) -> Path:
    """Import one subject's NSD-style betas, trial table and captions as a task dataset.

    Parameters
    ----------
    betas_dir : path
        Directory with ``{lh,rh}.betas_sessionNN.mgh``.
    trials_table : path
        TSV/CSV with columns ``session``, ``trial``, ``stimulus`` (see the module docstring).
    captions_json : path
        COCO-style captions; every stimulus id of the imported trials needs at least one caption.
    out : path
        Dataset directory to write.
    subject : str
        Subject label stored in ``subjects.jsonl``.
    atlas : Atlas, optional
        Default ``Atlas.schaefer(100)`` (fsaverage5, 20484 vertices).
    sessions : list of int, optional
        Import only these sessions (default: every session in the trial table).
    overwrite : bool
        Replace an existing `out`.

    Raises
    ------
    InputError
        Missing session files, trial counts that disagree with the betas, stimulus ids without
        captions, vertex counts that do not match the atlas (all checked from headers before any
        output exists), NaN/inf betas (found while streaming; the partial output is removed).
    """
    betas_dir, trials_table = Path(betas_dir), Path(trials_table)
    if not betas_dir.is_dir():
        raise InputError(betas_dir, "betas_dir", "directory missing")
    atlas = atlas if atlas is not None else Atlas.schaefer(100)
    trials = read_trials(trials_table)
    if sessions is not None:
        absent = sorted(set(sessions) - set(trials["session"].tolist()))
        if absent:
            raise InputError(trials_table, "session", f"requested session(s) {absent} have no trials")
        keep = np.isin(trials["session"], sessions)
        trials = {k: v[keep] for k, v in trials.items()}
    captions, files = read_captions(captions_json)
    stimulus_ids = np.unique(trials["stimulus"])
    uncaptioned = [int(s) for s in stimulus_ids if int(s) not in captions]
    if uncaptioned:
        raise InputError(captions_json, "annotations", f"no caption for {len(uncaptioned)} stimulus id(s) of "
                         f"the trial table, first {uncaptioned[:5]}")
    plan = plan_sessions(betas_dir, trials, trials_table, atlas)
    n_total = sum(s.n_trials for s in plan)

    config = {"betas_dir": str(betas_dir), "trials_table": str(trials_table),
              "captions_json": str(captions_json), "subject": subject, "sessions": [s.number for s in plan],
              "int16_scale": NSD_INT16_SCALE, "zscore": "per session, per vertex, sample std"}
    with DatasetWriter(out, "task", atlas.describe(), config, seed=0, overwrite=overwrite) as writer:
        betas = writer.create_array("betas", (n_total, atlas.n_vertices), "float32")
        for session in tqdm(plan, desc="NSD sessions", unit="session"):
            rows = slice(session.offset, session.offset + session.n_trials)
            betas[rows] = zscore_trials(read_session_betas(session, atlas))
        subject_index = np.zeros(n_total, np.int16)
        stimulus_rows = np.searchsorted(stimulus_ids, trials["stimulus"])
        writer.write_array("trial_stimulus", stimulus_rows.astype(np.int32))
        writer.write_array("trial_subject", subject_index)
        writer.write_array("trial_session", trials["session"].astype(np.int16))
        writer.write_array("trial_repeat", repeat_index(subject_index, trials["stimulus"]).astype(np.int8))
        writer.write_table("stimuli", [
            {"stimulus": m, "key": f"stim-{sid:06d}", "image_id": sid, "file_name": files.get(sid),
             "captions": captions[sid], "qa": [], "categories": [], "supercategories": [], "novel": False,
             "graph": {}} for m, sid in enumerate(stimulus_ids.tolist())])
        writer.write_table("subjects", [{"subject": subject}])
        return writer.finish(n_stimuli=int(stimulus_ids.size), n_subjects=1, novel_categories=[],
                             source="nsd", n_trials=n_total, sessions=[s.number for s in plan])


# --------------------------------------------------------------------- repeats
@dataclass
class RepeatAverage:
    """Trial responses averaged over repeated presentations of the same stimulus to the same subject."""

    betas: np.ndarray  # float32 [U, V]
    stimulus: np.ndarray  # int32 [U] row into stimuli.jsonl
    subject: np.ndarray  # int16 [U] row into subjects.jsonl
    n_repeats: np.ndarray  # int32 [U]


def average_repeats(betas: np.ndarray, trial_stimulus: np.ndarray, trial_subject: np.ndarray | None = None,
                    min_repeats: int = 1, chunk: int = 4096) -> RepeatAverage:
    """Average single-trial betas over repeats of each (subject, stimulus), e.g. for an NSD test set.

    Streams `betas` (a memmap from ``Dataset.array("betas")`` works) in chunks of `chunk` trials.
    Pairs seen fewer than `min_repeats` times are dropped (NSD's test set uses ``min_repeats=3``).
    Rows come sorted by (subject, stimulus).
    """
    trial_stimulus = np.asarray(trial_stimulus)
    trial_subject = np.zeros_like(trial_stimulus) if trial_subject is None else np.asarray(trial_subject)
    if not betas.shape[0] == trial_stimulus.shape[0] == trial_subject.shape[0]:
        raise InputError("average_repeats", "trials", f"betas has {betas.shape[0]} trials, trial_stimulus "
                         f"{trial_stimulus.shape[0]}, trial_subject {trial_subject.shape[0]}")
    pairs, inverse, counts = np.unique(np.stack([trial_subject, trial_stimulus], 1), axis=0,
                                       return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    n = trial_stimulus.size
    # Row u of `membership` holds 1/count at the trials of pair u, so membership @ betas is the mean.
    membership = sp.csc_matrix((1.0 / counts[inverse], (inverse, np.arange(n))), shape=(pairs.shape[0], n))
    means = np.zeros((pairs.shape[0], betas.shape[1]), np.float64)
    for start in tqdm(range(0, n, chunk), desc="averaging repeats", unit="chunk", disable=n <= chunk):
        stop = min(start + chunk, n)
        means += membership[:, start:stop] @ np.asarray(betas[start:stop], np.float64)
    keep = counts >= min_repeats
    return RepeatAverage(betas=means[keep].astype(np.float32), stimulus=pairs[keep, 1].astype(np.int32),
                         subject=pairs[keep, 0].astype(np.int16), n_repeats=counts[keep].astype(np.int32))
