"""Reader for task datasets (synthetic task world or imported NSD): the one door later stages use.

Layout (a :class:`~fmrilm.brain.store.Dataset` of kind ``"task"``):

- ``betas`` float32 [N_trials, V]: single trials per fsaverage5 vertex, z-scored per (subject, session);
- ``trial_stimulus`` int32, ``trial_subject`` int16, ``trial_session`` int16,
  ``trial_repeat`` int8, each [N_trials];
- ``stimuli.jsonl`` (key, captions, qa, categories, supercategories, novel, graph), ``subjects.jsonl``;
- synthetic only: ``clean`` [S, M, V], ``noise_ceiling`` [S, V] (% single trial), ``ncsnr``, ``noise_sd``,
  ``noise_basis`` [R, V], ``features``, ``weights``, ``patch_maps``, ``localizer_betas`` + ``localizer.jsonl``
  (see :mod:`fmrilm.brain.encoding_model`).

>>> data = TaskData("runs/task_world")                      # doctest: +SKIP
>>> x = data.mean_betas("sub-01", [0, 5, 9])                  # (3, 20484), repeats averaged
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fmrilm.brain.store import Dataset
from fmrilm.errors import InputError

REQUIRED_ARRAYS = ("betas", "trial_stimulus", "trial_subject", "trial_session", "trial_repeat")
STIMULUS_FIELDS = ("stimulus", "key", "captions", "qa", "categories", "novel")


class TaskData:
    """Validated, memory-mapped access to a task dataset directory.

    Parameters
    ----------
    path : path
        Dataset directory written by the task world or the NSD importer.

    Raises
    ------
    InputError
        Naming file and field when arrays are missing, trial tables disagree with the betas or the
        stimuli/subjects tables, or the vertex count disagrees with the atlas.
    """

    def __init__(self, path: str | Path):
        self.dataset = Dataset(path, kind="task")
        self.path = self.dataset.path
        missing = [name for name in REQUIRED_ARRAYS if name not in self.dataset.manifest["arrays"]]
        if missing:
            raise InputError(self.path / "manifest.json", "arrays", f"missing required arrays {missing}")
        self.stimuli: list[dict] = self.dataset.table("stimuli")
        self.subjects: list[dict] = self.dataset.table("subjects")
        self.betas = self.dataset.array("betas")
        self.trial_stimulus = np.asarray(self.dataset.array("trial_stimulus"))
        self.trial_subject = np.asarray(self.dataset.array("trial_subject"))
        self.trial_session = np.asarray(self.dataset.array("trial_session"))
        self.trial_repeat = np.asarray(self.dataset.array("trial_repeat"))
        self._validate()

    # ----------------------------------------------------------------- validation
    def _file(self, name: str) -> Path:
        return self.path / name

    def _validate(self) -> None:
        n_vertices = self.atlas_info.get("n_vertices")
        if self.betas.ndim != 2 or self.betas.shape[1] != n_vertices:
            raise InputError(
                self._file("betas.npy"),
                "shape",
                f"{self.betas.shape}: expected [N_trials, {n_vertices}] "
                f"(atlas {self.atlas_info.get('name')} has {n_vertices} vertices)",
            )
        n_trials = self.betas.shape[0]
        for name in ("stimulus", "subject", "session", "repeat"):
            arr = getattr(self, f"trial_{name}")
            if arr.shape != (n_trials,):
                raise InputError(
                    self._file(f"trial_{name}.npy"), "shape", f"{arr.shape}: betas.npy has {n_trials} trials"
                )
            if arr.size and arr.min() < 0:
                raise InputError(
                    self._file(f"trial_{name}.npy"), "values", f"negative entry {int(arr.min())}"
                )
        for name, table, rows in (
            ("stimulus", "stimuli.jsonl", self.stimuli),
            ("subject", "subjects.jsonl", self.subjects),
        ):
            arr = getattr(self, f"trial_{name}")
            if arr.size and arr.max() >= len(rows):
                raise InputError(
                    self._file(f"trial_{name}.npy"),
                    "values",
                    f"index {int(arr.max())} out of range: {table} has {len(rows)} rows",
                )
        for i, row in enumerate(self.stimuli):
            absent = [f for f in STIMULUS_FIELDS if f not in row]
            if absent or row["stimulus"] != i:
                raise InputError(
                    self._file("stimuli.jsonl"),
                    f"row {i}",
                    f"missing fields {absent}"
                    if absent
                    else f"'stimulus' is {row['stimulus']}, expected {i}",
                )
        manifest = self.dataset.manifest
        for key, actual in (("n_stimuli", len(self.stimuli)), ("n_subjects", len(self.subjects))):
            if key in manifest and manifest[key] != actual:
                raise InputError(
                    self._file("manifest.json"), key, f"{manifest[key]}, but the table has {actual} rows"
                )
        expected = {
            "clean": (len(self.subjects), len(self.stimuli), n_vertices),
            "noise_ceiling": (len(self.subjects), n_vertices),
        }
        for name, shape in expected.items():
            if name in manifest["arrays"] and tuple(manifest["arrays"][name]["shape"]) != shape:
                raise InputError(
                    self._file(f"{name}.npy"),
                    "shape",
                    f"{tuple(manifest['arrays'][name]['shape'])}, expected {shape}",
                )
        if "localizer_betas" in manifest["arrays"]:
            n_loc = manifest["arrays"]["localizer_betas"]["shape"][0]
            if manifest["tables"].get("localizer") != n_loc:
                raise InputError(
                    self._file("localizer.jsonl"),
                    "rows",
                    f"{manifest['tables'].get('localizer')} rows for {n_loc} localizer betas",
                )

    # ----------------------------------------------------------------- identity
    @property
    def atlas_info(self) -> dict:
        """``Atlas.describe()`` of the atlas the vertex axis refers to (check with ``Atlas.check_same``)."""
        return self.dataset.atlas_info

    @property
    def n_vertices(self) -> int:
        return int(self.betas.shape[1])

    @property
    def novel_categories(self) -> list[str]:
        """Categories held out of brain–text training (empty if the dataset declares none)."""
        return list(self.dataset.manifest.get("novel_categories", []))

    @property
    def novel_stimuli(self) -> np.ndarray:
        """Indices of stimuli that contain a novel category."""
        return np.array([m for m, row in enumerate(self.stimuli) if row["novel"]], np.int64)

    @property
    def category_synonyms(self) -> dict[str, list[str]]:
        """Words that name each category, from ``categories.json`` (or the scene vocabulary)."""
        if (self.path / "categories.json").is_file():
            return {c: info["synonyms"] for c, info in self.dataset.json("categories").items()}
        from fmrilm.brain.scenes import CATEGORY_SYNONYMS

        return dict(CATEGORY_SYNONYMS)

    @property
    def has_ground_truth(self) -> bool:
        """Whether the simulator's clean signal and noise ceiling are stored (synthetic data)."""
        return all(n in self.dataset.manifest["arrays"] for n in ("clean", "noise_ceiling"))

    # ----------------------------------------------------------------- trials
    def subject_index(self, subject: int | str) -> int:
        """Row of `subject` (index or name such as ``"sub-01"``) in subjects.jsonl."""
        if isinstance(subject, (int, np.integer)) and 0 <= int(subject) < len(self.subjects):
            return int(subject)
        for i, row in enumerate(self.subjects):
            if row.get("subject") == subject:
                return i
        raise InputError(
            self._file("subjects.jsonl"),
            "subject",
            f"unknown subject {subject!r}; have {[r.get('subject') for r in self.subjects]}",
        )

    def trials(self, subject: int | str | None = None) -> np.ndarray:
        """Trial indices (rows of ``betas``), of one subject or of all."""
        if subject is None:
            return np.arange(self.betas.shape[0])
        return np.flatnonzero(self.trial_subject == self.subject_index(subject))

    def mean_betas(self, subject: int | str, stimuli=None, chunk: int = 2048) -> np.ndarray:
        """Average over repeats (the NSD test convention): float32 (len(stimuli), V).

        Parameters
        ----------
        subject : int or str
        stimuli : sequence of int, optional
            Stimulus indices, in the order wanted (duplicates allowed). Default: every stimulus the
            subject saw, ascending.
        chunk : int
            Trials read from the memmap at a time.
        """
        trials = self.trials(subject)
        shown = self.trial_stimulus[trials]
        wanted = np.unique(shown) if stimuli is None else np.asarray(stimuli, np.int64).ravel()
        uniq, inverse = np.unique(wanted, return_inverse=True)
        if uniq.size and (uniq[0] < 0 or uniq[-1] >= len(self.stimuli)):
            raise InputError("mean_betas", "stimuli", f"indices must lie in 0..{len(self.stimuli) - 1}")
        slot_of = np.full(len(self.stimuli), -1, np.int64)
        slot_of[uniq] = np.arange(uniq.size)
        keep = slot_of[shown] >= 0
        rows, slots = trials[keep], slot_of[shown[keep]]
        counts = np.bincount(slots, minlength=uniq.size)
        if (counts == 0).any():
            raise InputError(
                self.path,
                "stimuli",
                f"stimuli {uniq[counts == 0][:10].tolist()} were never shown to subject {subject!r}",
            )
        sums = np.zeros((uniq.size, self.n_vertices), np.float32)
        for start in range(0, rows.size, chunk):
            r, s = rows[start : start + chunk], slots[start : start + chunk]
            # Sum rows into their stimulus slots with a 0/1 matrix: one BLAS-like pass per chunk.
            indicator = sp.csr_matrix(
                (np.ones(r.size, np.float32), (s, np.arange(r.size))), shape=(uniq.size, r.size)
            )
            sums += indicator @ np.asarray(self.betas[r])
        sums /= counts[:, None].astype(np.float32)
        return sums[inverse]

    # ----------------------------------------------------------------- ground truth
    def _truth(self, name: str) -> np.ndarray:
        if name not in self.dataset.manifest["arrays"]:
            raise InputError(
                self.path,
                name,
                f"not stored: {self.dataset.manifest.get('source', 'this')} "
                "dataset has no simulator ground truth",
            )
        return self.dataset.array(name)

    def clean(self, subject: int | str) -> np.ndarray:
        """Noise-free responses (M, V) of `subject`, on the betas' z-scale (synthetic only)."""
        return self._truth("clean")[self.subject_index(subject)]

    def noise_ceiling(self, subject: int | str) -> np.ndarray:
        """NSD-style single-trial noise ceiling (%) per vertex (V,)."""
        return np.asarray(self._truth("noise_ceiling")[self.subject_index(subject)])

    def noise_covariance(self, subject: int | str) -> tuple[np.ndarray, np.ndarray]:
        """Covariance of `subject`'s single-trial noise in the betas' z-units, as ``diag(d) + U Uᵀ``.

        The simulator's raw noise is ``z @ noise_basis + noise_independent_sd * e`` (unit variance
        per vertex) and session z-scoring divides each vertex by its expected total sd, i.e.
        multiplies by ``noise_sd``. So, taking the z-scoring's mean and sd as their expectations
        (they are estimated from each session's ~750 trials), ``d = (noise_independent_sd ·
        noise_sd)²`` and ``U = (noise_basis · noise_sd)ᵀ``; trials are independent of each other.

        Returns
        -------
        d : ndarray float64 [V]
        U : ndarray float64 [V, R]

        Raises
        ------
        InputError
            When the dataset has no noise basis (not synthetic, or written before it was saved).
        """
        if "noise_basis" not in self.dataset.manifest["arrays"]:
            raise InputError(self.path, "noise_basis", "not stored: the full noise covariance needs a synthetic "
                             "dataset written with its noise basis (regenerate it with `fmrilm world task`)")
        sd = np.asarray(self._truth("noise_sd")[self.subject_index(subject)], np.float64)
        basis = np.asarray(self.dataset.array("noise_basis"), np.float64)
        if basis.ndim != 2 or basis.shape[1] != self.n_vertices:
            raise InputError(self._file("noise_basis.npy"), "shape", f"{basis.shape}, expected [R, {self.n_vertices}]")
        independent = float(self.dataset.json("encoding")["noise_independent_sd"])
        return (independent * sd) ** 2, (basis * sd).T

    def localizer(self, subject: int | str) -> tuple[np.ndarray, list[str]]:
        """fLoc-style localizer betas (n, V) of `subject` and the category of each row."""
        s = self.subject_index(subject)
        rows = self.dataset.table("localizer")
        idx = [i for i, row in enumerate(rows) if row["subject"] == s]
        return np.asarray(self._truth("localizer_betas")[idx]), [rows[i]["category"] for i in idx]

    def __repr__(self) -> str:
        return (
            f"TaskData({str(self.path)!r}, stimuli={len(self.stimuli)}, subjects={len(self.subjects)}, "
            f"trials={self.betas.shape[0]}, ground_truth={self.has_ground_truth})"
        )
