"""The DeepSpeed training engine shared by every training stage (tokenizer, backbone, joint, instruct).

One code path from a laptop to a cluster. The same stage module runs as:

    # 1 process (CPU here; the engine sets up a 1-rank gloo group itself)
    DS_ACCELERATOR=cpu python -m fmrilm.stages.<stage> --config <stage>_demo
    # 2 CPU ranks on one machine
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module fmrilm.stages.<stage> --config <stage>_demo
    # N GPUs on one node
    deepspeed --num_gpus N --module fmrilm.stages.<stage> --config <stage>.yaml
    # M nodes × N GPUs (hostfile lines: "node1 slots=N")
    deepspeed --hostfile hostfile --num_nodes M --num_gpus N --module fmrilm.stages.<stage> --config <stage>.yaml

Global batch = micro_batch_size × grad_accum_steps × world_size (DeepSpeed checks it).

ZeRO configs ship in ``fmrilm/configs/deepspeed/``: ``zero2`` (optimizer state + gradients
sharded; the default, and what runs on CPU ranks here), ``zero3`` (parameters sharded too, for
models that don't fit one device), ``zero3_offload`` (ZeRO-3 with optimizer state and parameters
in CPU memory, DeepSpeedCPUAdam; slowest, smallest GPU footprint).

Checkpoints are DeepSpeed's own (torch files of *our* training state, for resuming our own runs
only); exported artifacts are safetensors. Each ``checkpoints/step-000123/`` ends with
``sha256.json`` (every file's digest, written after them, before ``latest``), and resume reads a
step only through ``torch.load(weights_only=True)`` after its digests match; a refused latest step
falls back to the previous one. Resumption is exact when the stage's data order is a pure function
of (seed, step), which every fmrilm stage guarantees (``fmrilm.seeds``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from fmrilm.config import CONFIG_DIR, add_config_args, config_from_args
from fmrilm.device import init_distributed
from fmrilm.errors import InputError, run_reported
from fmrilm.io import atomic_path, read_json, sha256_file, write_json

DS_CONFIG_DIR = CONFIG_DIR / "deepspeed"
CHECKSUMS = "sha256.json"  # in every checkpoint step directory: relative path -> sha256 of each file


@dataclass
class EngineConfig:
    deepspeed: str = "zero2"  # shipped name in fmrilm/configs/deepspeed/ or a path to a JSON file
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 10
    max_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr × this (Loshchilov & Hutter, SGDR)
    grad_clip: float = 1.0
    precision: str = "fp32"  # "bf16": autocast on CPU, DeepSpeed bf16 on GPU
    seed: int = 0
    checkpoint_every: int = 0  # optimizer steps; 0 = only when the stage asks
    keep_checkpoints: int = 2
    log_every: int = 10
    # Variable-length stages: draw batches from windows of this many global batches sorted by
    # length, so short samples are not padded to the longest of a random batch (0 = off).
    length_bucket_batches: int = 0
    # LM stages: a corrupt, truncated or missing corpus shard is skipped (warned, logged as
    # skipped_shards); more than this fraction of a split's shards skipped fails the stage.
    max_skipped_shards: float = 0.1
    # Bitwise-repeatable runs (torch.use_deterministic_algorithms). Off by default: without it two
    # identical 2-rank stage-3 runs drift apart by step 20 (multi-threaded CPU accumulation order),
    # with it they match exactly but train ~30 % slower here.
    deterministic: bool = False


def stage_argument_parser(description: str, default_config: str):
    """Command-line parser shared by the stage entry points (`python -m fmrilm.stages.<stage>`).

    Accepts the ``--local_rank`` argument the ``deepspeed`` launcher appends to every rank.
    """
    import argparse

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, default_config)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error (as FMRILM_DEBUG=1 does)")
    return parser


def stage_main(argv, description: str, default_config: str, config_cls, run) -> int:
    """The whole ``main()`` of a stage module: parse, load the typed config, run.

    Errors are reported as the ``fmrilm`` command reports them (:func:`fmrilm.errors.run_reported`):
    one line, exit 2 for bad input and 1 for anything else, the traceback with ``--debug``.
    """
    from fmrilm.config import check_required

    args = stage_argument_parser(description, default_config).parse_args(argv)

    def work() -> None:
        run(check_required(config_from_args(config_cls, args), args.config))  # returns the artifact path

    return run_reported(work, debug=args.debug)


def load_deepspeed_json(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.is_file():
        path = DS_CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        shipped = sorted(p.stem for p in DS_CONFIG_DIR.glob("*.json"))
        raise InputError(name_or_path, "deepspeed", f"no such JSON file or shipped config (shipped: {shipped})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, "json", str(err)) from None


def cosine_with_warmup(warmup: int, total: int, min_ratio: float):
    """LR multiplier: linear warm-up, then cosine decay to `min_ratio` at `total` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def write_checksums(step_dir: Path) -> None:
    """Record the sha256 of every file of a finished checkpoint step in ``step_dir/sha256.json``."""
    digests = {p.relative_to(step_dir).as_posix(): sha256_file(p)
               for p in sorted(step_dir.rglob("*")) if p.is_file() and p.name != CHECKSUMS}
    write_json(step_dir / CHECKSUMS, digests)


def verify_checksums(step_dir: Path) -> None:
    """Raise InputError naming the first file of a checkpoint step that its ``sha256.json`` does not
    vouch for: sidecar missing (an unfinished save, or not written by fmrilm), a file missing, added
    or changed."""
    sidecar = step_dir / CHECKSUMS
    if not sidecar.is_file():
        raise InputError(sidecar, "file", "missing: the checkpoint was not finished or not written by fmrilm")
    expected = read_json(sidecar)
    if not isinstance(expected, dict):
        raise InputError(sidecar, "json", "expected an object mapping file names to sha256 digests")
    present = {p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*") if p.is_file() and p != sidecar}
    for name in sorted(present | set(expected)):
        if name not in expected:
            raise InputError(step_dir / name, "sha256", f"not listed in {CHECKSUMS}: refusing to load it")
        if name not in present:
            raise InputError(step_dir / name, "file", f"listed in {CHECKSUMS} but missing")
        if sha256_file(step_dir / name) != expected[name]:
            raise InputError(step_dir / name, "sha256", f"does not match {CHECKSUMS} (corrupt or modified)")


def read_checkpoints_weights_only(ds_engine) -> None:
    """Make a DeepSpeed engine read checkpoint files with ``torch.load(weights_only=True)``.

    DeepSpeed's own reader unpickles with ``weights_only=False``, so a crafted file in a run directory
    would run code on resume. Its checkpoints hold tensors, containers and three plain DeepSpeed
    records, which the weights-only unpickler is allowed to rebuild and nothing else.
    """
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    def load(path, map_location=None):
        try:
            with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
                return torch.load(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError) as err:
            reason = str(err).strip().splitlines()[0]
            raise InputError(path, "checkpoint", f"refused by the weights-only reader ({reason})") from None

    # An instance attribute: DeepSpeed calls checkpoint_engine.load for every file it reads.
    ds_engine.checkpoint_engine.load = load


class TrainEngine:
    """A model wrapped by ``deepspeed.initialize`` with AdamW and a warm-up + cosine schedule.

    Parameters
    ----------
    model : torch.nn.Module
        ``model(**batch)`` returns a dict holding a scalar tensor ``"loss"`` and any other scalar
        tensors to log.
    cfg : EngineConfig
    run_dir : path
        Stage directory; checkpoints go to ``run_dir/checkpoints``, logs to ``run_dir/train_log.jsonl``.
    """

    def __init__(self, model: torch.nn.Module, cfg: EngineConfig, run_dir):
        init_distributed()
        import deepspeed

        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.rank = torch.distributed.get_rank()
        self.world_size = torch.distributed.get_world_size()
        self.is_main = self.rank == 0
        torch.manual_seed(cfg.seed)
        ds_config = self._deepspeed_config()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise InputError("model", "parameters", "no trainable parameters")
        schedule = cosine_with_warmup(cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        client_optimizer = None
        if "optimizer" not in ds_config:  # the offload config asks DeepSpeed for DeepSpeedCPUAdam
            # fused: one kernel over all parameters (CPU and CUDA); measured 18x faster than the
            # per-tensor loop on a 3.3M-parameter layer here
            client_optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas),
                                                 weight_decay=cfg.weight_decay, fused=True)
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=params, optimizer=client_optimizer, config=ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
        read_checkpoints_weights_only(self.ds)
        self.device = self.ds.device
        self._autocast = cfg.precision == "bf16" and not ds_config.get("bf16", {}).get("enabled", False)
        self._log_path = self.run_dir / "train_log.jsonl"
        self._t0 = time.time()

    def _deepspeed_config(self) -> dict:
        cfg = self.cfg
        ds = load_deepspeed_json(cfg.deepspeed)
        ds.update(train_micro_batch_size_per_gpu=cfg.micro_batch_size,
                  gradient_accumulation_steps=cfg.grad_accum_steps,
                  gradient_clipping=cfg.grad_clip, steps_per_print=10**9, wall_clock_breakdown=False)
        ds.pop("train_batch_size", None)  # derived by DeepSpeed from the three factors above
        if "optimizer" in ds:
            ds["optimizer"].setdefault("params", {}).update(lr=cfg.lr, betas=list(cfg.betas),
                                                            weight_decay=cfg.weight_decay)
        on_gpu = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") == "cuda"
        ds["bf16"] = {"enabled": cfg.precision == "bf16" and on_gpu}
        return ds

    # ----------------------------------------------------------------- training
    @property
    def module(self) -> torch.nn.Module:
        return self.ds.module

    @property
    def global_step(self) -> int:
        """Optimizer steps taken (micro-batches / grad_accum_steps)."""
        return int(self.ds.global_steps)

    @property
    def global_batch_size(self) -> int:
        return self.cfg.micro_batch_size * self.cfg.grad_accum_steps * self.world_size

    def autocast(self):
        if self._autocast:
            return torch.autocast(device_type=self.device.type if hasattr(self.device, "type") else "cpu",
                                  dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def train_step(self, batch: dict) -> dict[str, float]:
        """One micro-batch: forward, backward, and an optimizer step at accumulation boundaries."""
        self.ds.train()
        with self.autocast():
            out = self.ds(**self.to_device(batch))
        self.ds.backward(out["loss"])
        self.ds.step()
        metrics = {k: float(v.detach().float()) for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1}
        metrics["lr"] = float(self.scheduler.get_last_lr()[0])
        return metrics

    def all_reduce_mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average metrics over ranks; a key missing on some ranks (e.g. an objective absent from
        that rank's batch) is averaged over the ranks that have it, so ranks never disagree on shapes."""
        if self.world_size == 1:
            return dict(metrics)
        gathered: list[dict] = [{} for _ in range(self.world_size)]
        torch.distributed.all_gather_object(gathered, dict(metrics))
        keys = sorted({k for m in gathered for k in m})
        return {k: sum(m[k] for m in gathered if k in m) / sum(k in m for m in gathered) for k in keys}

    def log(self, step: int, metrics: dict[str, float], force: bool = False) -> dict | None:
        """Average metrics over ranks; every `log_every` steps the main rank prints and appends a JSON line."""
        if not force and (self.cfg.log_every <= 0 or step % self.cfg.log_every):
            return None
        row = {"step": step, **self.all_reduce_mean(metrics), "elapsed_s": round(time.time() - self._t0, 2)}
        self.log_event(row, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        return row

    # ----------------------------------------------------------------- checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def should_checkpoint(self, step: int) -> bool:
        return self.cfg.checkpoint_every > 0 and step > 0 and step % self.cfg.checkpoint_every == 0

    def save_checkpoint(self, step: int, client_state: dict | None = None) -> None:
        """Collective: every rank must call it. Writes ``checkpoints/step-000123``, its ``sha256.json``
        and then ``latest``, so ``latest`` only ever names a finished, checksummed step."""
        tag = f"step-{step:06d}"
        if self.is_main:  # a save interrupted at this step earlier must not mix with this one
            shutil.rmtree(self.checkpoint_dir / tag, ignore_errors=True)
        torch.distributed.barrier()
        state = dict(client_state or {}, step=step, torch_rng=torch.get_rng_state())
        self.ds.save_checkpoint(str(self.checkpoint_dir), tag=tag, client_state=state, save_latest=False)
        if self.is_main:
            write_checksums(self.checkpoint_dir / tag)
            with atomic_path(self.checkpoint_dir / "latest") as tmp:
                tmp.write_text(tag)
            self._prune_checkpoints()
        torch.distributed.barrier()

    def load_checkpoint(self) -> tuple[int, dict] | None:
        """Resume from the newest verified step up to ``checkpoints/latest``: (step, client_state) or None.

        Prints and logs "resuming from step N"; raises InputError naming the refused file when
        ``latest`` exists but no step passes :func:`verify_checksums`.
        """
        if not (self.checkpoint_dir / "latest").is_file():
            return None
        # The main rank checks the files (one read of them, not one per rank) and tells the others.
        choice = [self._verified_tag() if self.is_main else None]
        if self.world_size > 1:
            torch.distributed.broadcast_object_list(choice, src=0)
        tag, refusal = choice[0]
        if refusal is not None:
            raise InputError(*refusal)
        path, state = self.ds.load_checkpoint(str(self.checkpoint_dir), tag=tag)
        if path is None:
            raise InputError(self.checkpoint_dir / tag, "checkpoint", "DeepSpeed could not load it")
        torch.set_rng_state(state.pop("torch_rng"))
        step = int(state.pop("step"))
        self.log_event({"event": "resumed", "step": step, "checkpoint": str(self.checkpoint_dir / tag)},
                       f"resuming from step {step} (checkpoint {self.checkpoint_dir / tag})")
        return step, state

    def _verified_tag(self) -> tuple[str | None, tuple | None]:
        """(newest step at or before ``latest`` whose files match their sidecar, None), or
        (None, the InputError arguments refusing the newest step) when none does."""
        latest = (self.checkpoint_dir / "latest").read_text().strip()
        refusals = []
        if not (self.checkpoint_dir / latest).is_dir():
            refusals.append(InputError(self.checkpoint_dir / "latest", "tag", f"names missing {latest!r}"))
        for tag in sorted((p.name for p in self.checkpoint_dir.glob("step-*") if p.is_dir() and p.name <= latest),
                          reverse=True):
            try:
                verify_checksums(self.checkpoint_dir / tag)
            except InputError as err:
                warnings.warn(f"checkpoint {tag} refused: {err}", RuntimeWarning, stacklevel=2)
                refusals.append(err)
                continue
            if refusals:
                warnings.warn(f"falling back to checkpoint {tag}", RuntimeWarning, stacklevel=2)
            return tag, None
        return None, (refusals[0].source, refusals[0].field, refusals[0].problem)

    def log_event(self, row: dict, message: str) -> None:
        """On the main rank: print `message` and append `row` to ``train_log.jsonl``."""
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self._log_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(message, flush=True)

    def _prune_checkpoints(self) -> None:
        tags = sorted(p for p in self.checkpoint_dir.glob("step-*") if p.is_dir())
        for old in tags[: max(0, len(tags) - self.cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)

    def barrier(self) -> None:
        torch.distributed.barrier()

    def cleanup(self) -> None:
        """End of a stage. A launcher's group is torn down; a 1-rank group made by
        :func:`init_distributed` stays, because DeepSpeed caches it and a later engine in the same
        process (the pipeline runs several stages) must find it again."""
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            if os.environ.get("FMRILM_OWN_GROUP_PORT") != os.environ.get("MASTER_PORT"):
                torch.distributed.destroy_process_group()
