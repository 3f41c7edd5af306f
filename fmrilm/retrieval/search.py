"""Search indexes of a run: a brain embedder and two FAISS indexes, so scans find captions and back.

Built by the pipeline's ``retrieval`` stage (or :func:`build_search_indexes`) from the run's task
dataset, corpus splits and tokenizer, and queried by ``fmrilm search``::

    fmrilm search --run runs/demo --scan sub-01/stim-000012 -k 5     # scan → nearest captions
    fmrilm search --run runs/demo --text "a zebra on grass" -k 5      # caption → nearest test scans

A scan is one subject's repeats of one stimulus, averaged (the NSD test convention), tokenized by
the run's tokenizer; its feature is the code vectors of its tokens (what the LM is given), mapped
into the MiniLM space by a brain embedder trained on the training stimuli only. The directory::

    OUT/embedder/      BrainEmbedder (token features → 384-d)
    OUT/captions/      SemanticIndex of every stimulus's first caption (metadata: stimulus, split, caption),
                       and of the world's text-only scenes (split ``text_only``, no brain data)
    OUT/scans/         SemanticIndex of every (subject, test stimulus) scan, id ``SUBJECT/STIMULUS``
    OUT/search.json    the task dataset, tokenizer (and its fingerprint) and corpus it was built from,
                       counts, training loss
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fmrilm.config import check_required, required_path, save_config
from fmrilm.errors import InputError
from fmrilm.io import atomic_dir, portable_path, read_json, recorded_path, write_json
from fmrilm.retrieval.brain_embedder import BrainEmbedder, BrainEmbedderConfig, train_brain_embedder
from fmrilm.retrieval.caption_prompts import TEXT_ONLY
from fmrilm.retrieval.index import IndexConfig, SemanticIndex
from fmrilm.seeds import stream

SEARCH_FILE = "search.json"


@dataclass
class SearchIndexConfig:
    """What the search indexes are built from (pipeline stage ``retrieval``; paths filled in by it).

    Attributes
    ----------
    corpus : str
        Corpus directory: its ``corpus.json`` names the task dataset.
    tokenizer : str
        Tokenizer artifact or its stage directory.
    splits : str
        The run's splits file (default: the one the corpus records). The embedder trains on the
        train stimuli of the train task subjects only; corpus and tokenizer must record the same file.
    out : str
    max_train_items : int
        (subject, stimulus) training scans for the embedder, spread evenly over subjects.
    seed : int
    embedder : BrainEmbedderConfig
    index : IndexConfig
    """

    corpus: str = required_path()  # run paths: required (the pipeline fills them in)
    tokenizer: str = required_path()
    splits: str = ""
    out: str = required_path()
    max_train_items: int = 3000
    seed: int = 0
    embedder: BrainEmbedderConfig = field(default_factory=lambda: BrainEmbedderConfig(epochs=30))
    index: IndexConfig = field(default_factory=IndexConfig)


def scan_features(data, tokenizer, subject: int, stimuli) -> np.ndarray:
    """Token-code features ``[n, P·L·C]`` of one subject's averaged scans of `stimuli`."""
    from fmrilm.tokenizer.features import token_features, tokenize_betas

    return token_features(tokenizer, tokenize_betas(tokenizer, data.mean_betas(subject, list(stimuli))))


def text_only_scenes(data, heldout) -> list[dict]:
    """The task world's text-only scenes (table ``text_scenes``: captions naming the novel categories,
    never shown as stimuli), less any whose caption is word for word a val/test caption."""
    if "text_scenes" not in data.dataset.manifest.get("tables", {}):
        return []
    heldout_captions = {c for row in data.stimuli if heldout.splits.stimuli[row["key"]] != "train"
                        for c in row["captions"]}
    return [row for row in data.dataset.table("text_scenes") if row["captions"][0] not in heldout_captions]


def scan_id(data, subject: int, stimulus: int) -> str:
    """``SUBJECT/STIMULUS`` as ``fmrilm ask --scan`` and ``fmrilm search --scan`` take it."""
    return f"{data.subjects[subject]['subject']}/{data.stimuli[stimulus]['key']}"


def parse_scan_id(data, text: str) -> tuple[int, int]:
    """(subject row, stimulus row) of a scan id in a TaskData: the inverse of :func:`scan_id`.

    ``SUBJECT/STIMULUS``, where SUBJECT is a subject id (``sub-01``) or row, and STIMULUS a stimulus
    key (``stim-000012``) or row (``fmrilm ask --scan`` and ``fmrilm search --scan`` take it).
    """
    parts = text.split("/")
    if len(parts) != 2:
        raise InputError("--scan", "format", f"{text!r}; expected SUBJECT/STIMULUS, e.g. sub-01/stim-000012")
    subject_text, stimulus_text = parts
    subject = data.subject_index(int(subject_text) if subject_text.isdigit() else subject_text)
    keys = {row["key"]: i for i, row in enumerate(data.stimuli)}
    if stimulus_text.isdigit() and int(stimulus_text) < len(data.stimuli):
        return subject, int(stimulus_text)
    if stimulus_text not in keys:
        raise InputError("--scan", "stimulus", f"{stimulus_text!r} is neither a stimulus key nor a row "
                         f"(0..{len(data.stimuli) - 1})")
    return subject, keys[stimulus_text]


def build_search_indexes(cfg: SearchIndexConfig, overwrite: bool = False, progress: bool = True) -> Path:
    """Train the embedder on training scans, index captions and test scans, write ``cfg.out``.

    Raises
    ------
    InputError
        Before anything is written: a corpus without task data or test stimuli, too few training
        scans, a tokenizer of another atlas or other than the corpus's, an existing output without
        `overwrite`.
    """
    from fmrilm.artifacts import check_compatible, resolve_tokenizer_dir
    from fmrilm.brain.task_data import TaskData
    from fmrilm.corpus.heldout import load_heldout
    from fmrilm.textembed import embed_texts
    from fmrilm.tokenizer.model import BrainTokenizer

    check_required(cfg, "search index config")
    if Path(cfg.out).exists() and not overwrite:
        raise InputError(cfg.out, "out", "already exists (pass overwrite=True / --force to replace it)")
    heldout = load_heldout(cfg.corpus, cfg.splits or None)
    tokenizer_dir = resolve_tokenizer_dir(cfg.tokenizer)
    check_compatible(tokenizer_dir, corpus_dir=cfg.corpus, splits=heldout.splits)
    task_path = heldout.input_path("task_dataset")
    if task_path is None or heldout.test_stimuli.size == 0:
        raise InputError(Path(cfg.corpus) / "corpus.json", "inputs.task_dataset", "the corpus has no task test data")
    data = TaskData(task_path)
    tokenizer = BrainTokenizer.from_pretrained(tokenizer_dir, data.atlas_info).eval()
    # Held-out task subjects train nothing: the embedder sees the train subjects' train stimuli only.
    trained = heldout.splits.task_subject_indices(data.dataset, "train")
    per_subject = max(1, cfg.max_train_items // len(trained))
    rng = stream(cfg.seed, "search.train_items")
    train_rows = [(int(s), np.sort(rng.permutation(heldout.train_stimuli)[:per_subject])) for s in trained]
    if sum(len(m) for _, m in train_rows) < 2:
        raise InputError(cfg.corpus, "train", "fewer than 2 training scans: the embedder cannot be trained")

    features = np.concatenate([scan_features(data, tokenizer, s, m) for s, m in train_rows])
    captions = [data.stimuli[m]["captions"][0] for _, stimuli in train_rows for m in stimuli]
    embedder, history = train_brain_embedder(features, embed_texts(captions), cfg.embedder, progress=progress)

    test, subjects = heldout.test_stimuli, range(len(data.subjects))
    scan_vectors = np.concatenate([embedder.embed(scan_features(data, tokenizer, s, test)) for s in subjects])
    scan_ids = [scan_id(data, s, m) for s in subjects for m in test]
    scan_meta = [{"subject": data.subjects[s]["subject"], "stimulus": data.stimuli[m]["key"],
                  "caption": data.stimuli[m]["captions"][0]} for s in subjects for m in test]
    text_scenes = text_only_scenes(data, heldout)
    bank = [row["captions"][0] for row in data.stimuli] + [row["captions"][0] for row in text_scenes]
    caption_meta = [{"stimulus": row["key"], "stimulus_index": i, "split": heldout.splits.stimuli[row["key"]],
                     "caption": row["captions"][0]}
                    for i, row in enumerate(data.stimuli)]
    # text-only scenes have no brain data (stimulus_index -1): a retriever may add them to its bank
    caption_meta += [{"stimulus": row["key"], "stimulus_index": -1, "split": TEXT_ONLY, "caption": row["captions"][0]}
                     for row in text_scenes]
    captions_index = SemanticIndex.build(embed_texts(bank, progress=progress),
                                         [r["key"] for r in data.stimuli] + [r["key"] for r in text_scenes],
                                         caption_meta, cfg.index)
    scans_index = SemanticIndex.build(scan_vectors, scan_ids, scan_meta, cfg.index)
    with atomic_dir(cfg.out, overwrite) as tmp:
        embedder.save(tmp / "embedder", summary={"final_train_loss": history[-1], "n_train": len(features)})
        captions_index.save(tmp / "captions")
        scans_index.save(tmp / "scans")
        # paths into the same run relative to cfg.out (the scratch directory sits beside it)
        write_json(tmp / SEARCH_FILE, {"task_dataset": portable_path(task_path, cfg.out),
                                       "tokenizer": portable_path(tokenizer_dir, cfg.out),
                                       "tokenizer_fingerprint": tokenizer.fingerprint,
                                       "corpus": portable_path(cfg.corpus, cfg.out), "n_train_scans": len(features),
                                       "splits": {**heldout.splits.record(),
                                                  "path": portable_path(heldout.splits.path, cfg.out)},
                                       "train_subjects": [data.subjects[s]["subject"] for s in trained],
                                       "n_captions": len(captions_index), "n_text_only": len(text_scenes),
                                       "n_scans": len(scans_index),
                                       "final_train_loss": history[-1]})
        save_config(cfg, tmp / "search_config.yaml")
    return Path(cfg.out)


def embed_scan(search_dir, scan: str) -> np.ndarray:
    """Brain embedding ``[1, 384]`` of scan ``SUBJECT/STIMULUS`` with the run's tokenizer and embedder.

    Raises InputError before any compute when the tokenizer no longer is the one the indexes were built with.
    """
    from fmrilm.artifacts import check_compatible
    from fmrilm.brain.task_data import TaskData
    from fmrilm.tokenizer.model import BrainTokenizer

    search_dir = Path(search_dir)
    check_compatible(search_dir=search_dir)
    info = read_json(search_dir / SEARCH_FILE)
    data = TaskData(recorded_path(info["task_dataset"], search_dir))
    subject, stimulus = parse_scan_id(data, scan)
    tokenizer = BrainTokenizer.from_pretrained(recorded_path(info["tokenizer"], search_dir), data.atlas_info).eval()
    return BrainEmbedder.load(search_dir / "embedder").embed(scan_features(data, tokenizer, subject, [stimulus]))
