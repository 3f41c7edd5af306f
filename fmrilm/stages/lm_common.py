"""Shared machinery of the language-model stages (0 backbone, 2 joint, 3 instruct).

- a corpus split read into memory by :func:`fmrilm.corpus.reader.read_split` (corrupt shards are
  skipped and counted, never silently lost);
- encoding, up front, every sample the run will visit (a run shorter than an epoch visits a
  fraction of the corpus), so a sample that does not fit the context is an error before the first
  step, naming the sample;
- a data order that is a pure function of (seed, step, rank), so a run resumed from a DeepSpeed
  checkpoint sees exactly the batches the uninterrupted run saw;
- the train loop (resume, logging with skip counts, periodic checkpoints) and the export protocol:
  each stage writes ``stage.json`` last inside its export directory, which marks it finished.

:class:`fmrilm.stages.recipe.LMRecipe` drives these for the three stages.

Every rank holds the whole split in memory and draws its own slice of each global batch: simple and
exact, and the corpus is small next to the model (a sample is a few hundred token ids plus text).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fmrilm.artifacts import STAGE_FILE, read_corpus_record, read_stage_record, stage_record
from fmrilm.config import save_config
from fmrilm.corpus.reader import SkipCounter
from fmrilm.corpus.shards import load_manifest
from fmrilm.device import init_distributed
from fmrilm.engine import EngineConfig, TrainEngine
from fmrilm.errors import InputError
from fmrilm.io import read_json, write_json
from fmrilm.llm.brain_input import ScanLatents
from fmrilm.llm.formatting import collate
from fmrilm.seeds import micro_batch_positions, stream, visited_positions

CODE_EMBEDDINGS_FILE = "code_embeddings.safetensors"
TOKENIZER_FORMAT = "fmrilm-brain-tokenizer"


# ------------------------------------------------------------------------------ stage artifacts
def is_finished(export_dir: str | Path) -> bool:
    return (Path(export_dir) / STAGE_FILE).is_file()


def read_stage(export_dir: str | Path, stage: str | None = None) -> dict:
    """The ``stage.json`` of a finished export, its paths resolved; InputError if missing or from another stage."""
    info = read_stage_record(export_dir)
    if stage is not None and info.get("stage") != stage:
        raise InputError(export_dir, "stage", f"is a {info.get('stage')!r} export, expected {stage!r}")
    return info


def tokenizer_identity(tokenizer_dir: str | Path) -> dict:
    """Tag (for directory names), fingerprint and codebook layout of a stage-1 tokenizer directory."""
    tokenizer_dir = Path(tokenizer_dir)
    meta = read_json(tokenizer_dir / "config.json")
    if meta.get("format") != TOKENIZER_FORMAT:
        raise InputError(tokenizer_dir / "config.json", "format",
                         f"{meta.get('format')!r} is not a brain tokenizer (run stage 1: fmrilm.stages.tokenizer)")
    q = meta["tokenizer"]["quantizer"]
    return {"tag": f"{q['kind']}K{q['codebook_size']}L{q['levels']}", "path": str(tokenizer_dir.resolve()),
            "fingerprint": meta["fingerprint"]}


@dataclass
class TokenizerExports:
    """What the LM stages take from a stage-1 tokenizer.

    Attributes
    ----------
    code_embeddings : Tensor [vocab, d_code]
        Row i: the vector of brain token id i (initialises the brain-token embeddings).
    tokens_per_scan : int
        P·L brain tokens per scan.
    text_readout : Tensor [P·L, d_code, d_text] or None
        The contrastive read-out into the text space, one slice per token slot (starts the scan
        conditioning); None for a tokenizer trained without a contrastive head.
    """

    code_embeddings: torch.Tensor
    tokens_per_scan: int
    text_readout: torch.Tensor | None


def load_tokenizer_exports(tokenizer_dir: str | Path) -> TokenizerExports:
    """Read ``code_embeddings.safetensors`` (tensors ``code_embeddings`` and, optionally, ``text_readout``).

    The LM stages never import the tokenizer package: this file and ``config.json`` are the interface.
    """
    from safetensors.torch import load_file

    tokenizer_dir = Path(tokenizer_dir)
    tokenizer_identity(tokenizer_dir)
    path = tokenizer_dir / CODE_EMBEDDINGS_FILE
    if not path.is_file():
        raise InputError(path, "file",
                         "missing: re-save the tokenizer with this version (BrainTokenizer.save_pretrained)")
    tensors = {k: v.float() for k, v in load_file(str(path)).items()}
    if "code_embeddings" not in tensors:
        raise InputError(path, "code_embeddings", f"missing tensor (has {sorted(tensors)})")
    table, readout = tensors["code_embeddings"], tensors.get("text_readout")
    if table.ndim != 2 or not torch.isfinite(table).all():
        raise InputError(path, "code_embeddings", f"expected finite [K, d_code], got {tuple(table.shape)}")
    meta = read_json(tokenizer_dir / "config.json")
    tokens_per_scan = int(meta["atlas"]["n_parcels"]) * int(meta["tokenizer"]["quantizer"]["levels"])
    if readout is not None and (readout.shape[:2] != (tokens_per_scan, table.shape[1])
                                or not torch.isfinite(readout).all()):
        raise InputError(path, "text_readout", f"expected finite [{tokens_per_scan}, {table.shape[1]}, d_text], "
                                               f"got {tuple(readout.shape)}")
    return TokenizerExports(table, tokens_per_scan, readout)


def check_corpus_tokenizer(corpus_dir: str | Path, split: str, tokenizer: dict) -> dict:
    """The split's manifest, after checking its tokens were made by `tokenizer` (same fingerprint)."""
    manifest = load_manifest(corpus_dir, split)
    made_by = manifest.get("tokenizer") or {}
    if made_by.get("fingerprint") != tokenizer["fingerprint"]:
        raise InputError(corpus_dir, "tokenizer",
                         f"corpus tokens were made by tokenizer {made_by.get('name')!r} (fingerprint "
                         f"{made_by.get('fingerprint')}), not by {tokenizer['path']} (fingerprint "
                         f"{tokenizer['fingerprint']}): rebuild the corpus with this tokenizer's tokens")
    return manifest


# ------------------------------------------------------------------------------------- data
def weight_tasks(samples: list[dict], weights: dict[str, float], seed: int) -> np.ndarray:
    """Positions of `samples` resampled by task: weight w keeps each sample of its task ⌊w⌋ times, plus
    once more with probability w − ⌊w⌋ (seeded); tasks not named keep weight 1.

    A mixture knob for the LM stages: e.g. stage 3 up-weights captions, whose scan conditioning takes
    hold only when captions are a large share of the batches.
    """
    present = {s["json"]["task"] for s in samples}
    for task, weight in weights.items():
        if task not in present:
            raise InputError("config", f"task_weights.{task}", f"no such task in the mixture {sorted(present)}")
        if not weight >= 0:
            raise InputError("config", f"task_weights.{task}", f"{weight} is not a weight >= 0")
    rng = stream(seed, "lm.task_weights")
    w = np.array([float(weights.get(s["json"]["task"], 1.0)) for s in samples])
    copies = np.floor(w).astype(int) + (rng.random(len(samples)) < w - np.floor(w))
    if copies.sum() == 0:
        raise InputError("config", "task_weights", "every sample was weighted away")
    return np.repeat(np.arange(len(samples)), copies)


def approx_length(sample: dict) -> int:
    """A sample's token count, estimated without tokenizing (brain tokens + ~4 characters per text
    token): close enough to sort samples into length buckets."""
    meta = sample["json"]
    brain = int(np.asarray(sample["tokens.npy"]).size) if "tokens.npy" in sample else 0
    return brain + (len(meta.get("prompt") or "") + len(meta.get("answer") or "")) // 4


def encode_samples(samples: list[dict], encode: Callable[[dict, int], dict], max_length: int | None,
                   indices=None, progress: bool = True) -> dict[int, dict]:
    """Encode the samples at `indices` (default: all), keyed by index; InputError naming the first
    sample longer than the context."""
    encoded = {}
    for i in tqdm(range(len(samples)) if indices is None else indices, desc="encoding", unit="sample",
                  disable=not progress):
        item = encode(samples[i], i)
        if max_length is not None and len(item["input_ids"]) > max_length:
            raise InputError(samples[i]["__key__"], "length",
                             f"{len(item['input_ids'])} tokens exceed the context of {max_length}: raise "
                             f"llm.max_length (up to the backbone's context) or leave this task out")
        encoded[i] = item
    return encoded


@dataclass
class TrainingSet:
    """What a run trains on: positions ``0..size-1``, each an encoded sample.

    Attributes
    ----------
    size : int
        Positions in one epoch (samples after task resampling).
    items : dict of int to dict
        The encoded sample of every position the run's data order visits — all of them once the run
        spans an epoch; a shorter run encodes (and length-checks) only what it will train on.
    lengths : ndarray or None
        Approximate token counts of all positions (:func:`approx_length`) for the engine's length
        bucketing; None when bucketing is off.
    latents : ScanLatents or None
        Where a model with ``brain_input: continuous`` reads the items' scans from (by their ``scans``
        references, at batch time).
    """

    size: int
    items: dict[int, dict]
    lengths: np.ndarray | None
    latents: ScanLatents | None = None


def training_set(samples: list[dict], encode: Callable[[dict, int], dict], max_length: int | None,
                 cfg: EngineConfig, mixture: np.ndarray | None = None, progress: bool = True,
                 latents: ScanLatents | None = None) -> TrainingSet:
    """Encode what the run will visit. `mixture` maps positions to sample indices (default: identity);
    `latents` (continuous brain input) are looked up by the items' ``scans`` references at batch time.

    Call after :func:`prepare_run` (the visited positions depend on the world size).
    """
    mixture = np.arange(len(samples)) if mixture is None else np.asarray(mixture)
    lengths = np.array([approx_length(samples[i]) for i in mixture]) if cfg.length_bucket_batches > 1 else None
    visit = visited_positions(len(mixture), cfg.max_steps * cfg.grad_accum_steps, cfg.micro_batch_size,
                              torch.distributed.get_world_size(), cfg.seed, lengths, cfg.length_bucket_batches)
    encoded = encode_samples(samples, encode, max_length, np.unique(mixture[visit]).tolist(), progress)
    return TrainingSet(len(mixture), {int(p): encoded[int(mixture[p])] for p in visit}, lengths, latents)


def scan_latents(model, corpus_dir) -> ScanLatents | None:
    """The corpus's encoder outputs when `model` reads continuous brain input, else None."""
    if model.llm_config.brain_input != "continuous":
        return None
    found = ScanLatents.from_corpus(corpus_dir)
    if found.d_code != model.brain_embed.proj.in_features:
        raise InputError(corpus_dir, "latents", f"width {found.d_code}, the model's projection reads "
                                                f"{model.brain_embed.proj.in_features}")
    return found


def batch_for_step(data: TrainingSet, step: int, engine: TrainEngine, pad_id: int,
                   max_length: int | None) -> dict[str, torch.Tensor]:
    """This rank's micro-batch at micro-step `step`: a pure function of (seed, step, rank, world)."""
    e = engine.cfg
    positions = micro_batch_positions(data.size, step, e.micro_batch_size, engine.rank, engine.world_size,
                                      e.seed, data.lengths, e.length_bucket_batches)
    return collate([data.items[int(i)] for i in positions], pad_id, max_length, data.latents)


# ----------------------------------------------------------------------------------- training
def prepare_run(train_dir: Path, export_dir: Path, force: bool) -> None:
    """Join the process group; with `force`, the main rank removes the old run and export first."""
    init_distributed()
    if force and torch.distributed.get_rank() == 0:
        for path in (train_dir, export_dir):
            shutil.rmtree(path, ignore_errors=True)
    torch.distributed.barrier()


def train_loop(engine: TrainEngine, data: TrainingSet, pad_id: int, max_length: int | None, desc: str,
               skipped: SkipCounter | None = None) -> int:
    """Optimizer steps up to ``max_steps``, resuming from the latest checkpoint; returns the last step.

    Checkpoints every ``checkpoint_every`` steps and once at the end (so a kill between training and
    export resumes straight into the export).
    """
    e: EngineConfig = engine.cfg
    if data.size < e.micro_batch_size * engine.world_size:
        raise InputError(desc, "samples", f"{data.size} training samples, fewer than one global batch "
                                          f"({e.micro_batch_size} × {engine.world_size} ranks)")
    resumed = engine.load_checkpoint()
    step = resumed[0] if resumed else 0
    last_saved = step if resumed else None
    bar = tqdm(total=e.max_steps, initial=step, disable=not engine.is_main, desc=desc)
    metrics: dict[str, float] = {}
    while step < e.max_steps:
        for micro in range(e.grad_accum_steps):
            metrics = engine.train_step(batch_for_step(data, step * e.grad_accum_steps + micro, engine, pad_id,
                                                       max_length))
        step += 1
        bar.update(1)
        if skipped is not None:
            metrics.update(skipped_shards=float(skipped.shards), skipped_samples=float(skipped.samples))
        engine.log(step, metrics, force=step == e.max_steps)
        if engine.should_checkpoint(step):
            engine.save_checkpoint(step)
            last_saved = step
    bar.close()
    if e.checkpoint_every > 0 and step > 0 and last_saved != step:
        engine.save_checkpoint(step)
    return step


@contextlib.contextmanager
def full_parameters(engine: TrainEngine):
    """Under ZeRO-3 gather the sharded parameters on every rank (collective); a no-op otherwise."""
    if engine.ds.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            yield
    else:
        yield


def export(engine: TrainEngine, export_dir: Path, save: Callable[[Path], None], stage_cfg,
           info: dict) -> Path | None:
    """Write the stage's export on the main rank: `save(dir)`, the resolved config, ``stage.json`` last.

    Collective (every rank calls it, for ZeRO-3 gathering); returns the directory on the main rank.
    ``stage.json`` also records the splits file the stage's corpus was built on.
    """
    corpus = Path(stage_cfg.corpus)
    info = {**info, "splits": read_corpus_record(corpus).get("run_splits") if (corpus / "corpus.json").is_file()
            else None}
    with full_parameters(engine):
        if engine.is_main:
            save(export_dir)
            save_config(stage_cfg, export_dir / "stage_config.yaml")
            write_json(export_dir / STAGE_FILE, stage_record(info, export_dir))
            print(f"{info['stage']} export written to {export_dir}", flush=True)
    engine.barrier()
    return export_dir if engine.is_main else None


def skip_finished(export_dir: Path, force: bool) -> bool:
    """True (with a message) when `export_dir` is a finished export and the run is not forced."""
    if is_finished(export_dir) and not force:
        print(f"{export_dir} is already finished; nothing to do (--set force=true to redo it)", flush=True)
        return True
    return False


def resolve_backbone(path: str | Path | None) -> tuple[Path, str]:
    """The HF directory and name tag of a backbone given as a stage-0 export or a local HF directory.

    Stage 0 either holds the bootstrapped model itself or records an external checkpoint's path.
    """
    from fmrilm.llm.backbone import check_backbone_dir

    if path is not None and is_finished(path):
        info = read_stage(path, "backbone")
        hf_dir = Path(path) if (Path(path) / "config.json").is_file() else Path(info["backbone_path"])
        return check_backbone_dir(hf_dir), info["backbone_tag"]
    hf_dir = check_backbone_dir(path)
    return hf_dir, name_tag(hf_dir.resolve().name)


def name_tag(text: str) -> str:
    """`text` reduced to characters safe in a directory name component (no '-' separators)."""
    return "".join(c if c.isalnum() or c in "._" else "_" for c in text)
