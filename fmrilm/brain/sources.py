"""A researcher's own data as the pipeline's first stage: where it lives, and the importers it goes through.

    fmrilm pipeline --config nsd --set source.betas_dir=nsd/subj01/fsaverage/betas_fithrf_GLMdenoise_RR \
        source.trials=trials.tsv source.captions=captions.json
    fmrilm pipeline --config nsd --set source.rest_dir=rest_runs source.participants=rest_runs/participants.tsv ...

``task_import`` turns NSD-style betas into a task dataset (:mod:`fmrilm.brain.nsd`); ``rest_import`` turns
a directory of rest runs into a rest dataset (:mod:`fmrilm.brain.rest_dir`). Everything downstream reads
those datasets exactly as it reads the synthetic worlds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fmrilm.errors import InputError


@dataclass
class SourceConfig:
    """The files of an own-data run (pipeline config ``source``; empty fields: not given).

    Attributes
    ----------
    betas_dir : str
        NSD-style ``{lh,rh}.betas_sessionNN.mgh`` directory (stage ``task_import``).
    trials : str
        Trial table: ``session``, ``trial``, ``stimulus`` columns (see :mod:`fmrilm.brain.nsd`).
    captions : str
        COCO-style captions JSON covering every stimulus id of the trial table.
    subject : str
        Subject label stored with the imported betas.
    sessions : list of int
        Import only these sessions (empty: every session in the trial table).
    rest_dir : str
        Directory of rest runs, one subject each (stage ``rest_import``; see :mod:`fmrilm.brain.rest_dir`).
    labels_img : str
        Label atlas of volumetric (NIfTI) rest runs, one label per parcel of the atlas.
    participants : str
        BIDS ``participants.tsv`` with ``participant_id`` and any of ``sex``, ``age``, ``diagnosis``, ``site``
        (empty: ``rest_dir/participants.tsv`` if it exists, else phenotypes unknown).
    tr : float or None
        Repetition time of the rest runs in seconds (None: from each file's header).
    """

    betas_dir: str = ""
    trials: str = ""
    captions: str = ""
    subject: str = "subj01"
    sessions: list[int] = field(default_factory=list)
    rest_dir: str = ""
    labels_img: str = ""
    participants: str = ""
    tr: float | None = None


def _require(cfg: SourceConfig, names: tuple[str, ...], stage: str, where: str) -> None:
    missing = [f"source.{n}" for n in names if not getattr(cfg, n)]
    if missing:
        raise InputError(where, ", ".join(missing), f"required by stage {stage} (set them with --set "
                         f"{'=… '.join(missing)}=…)")


def check_source(cfg: SourceConfig, stages: set[str], where: str) -> None:
    """Refuse, before any stage runs, a source the configured import stages cannot read."""
    if "task_import" in stages:
        _require(cfg, ("betas_dir", "trials", "captions"), "task_import", where)
        for name in ("betas_dir", "trials", "captions"):
            if not Path(getattr(cfg, name)).exists():
                raise InputError(getattr(cfg, name), f"source.{name}", "does not exist")
    if "rest_import" in stages:
        _require(cfg, ("rest_dir",), "rest_import", where)
        if not Path(cfg.rest_dir).is_dir():
            raise InputError(cfg.rest_dir, "source.rest_dir", "is not a directory")


def import_task_source(cfg: SourceConfig, out: Path, overwrite: bool = False) -> Path:
    """The task dataset of `cfg`'s NSD-style files at `out`."""
    from fmrilm.brain.nsd import import_nsd

    return import_nsd(cfg.betas_dir, cfg.trials, cfg.captions, out, subject=cfg.subject,
                      sessions=list(cfg.sessions) or None, overwrite=overwrite)


def import_rest_source(cfg: SourceConfig, out: Path, overwrite: bool = False) -> Path:
    """The rest dataset of `cfg`'s directory of runs at `out`."""
    from fmrilm.brain.rest_dir import import_rest_dir

    return import_rest_dir(cfg.rest_dir, out, participants=cfg.participants or None,
                           labels_img=cfg.labels_img or None, tr=cfg.tr, overwrite=overwrite)
