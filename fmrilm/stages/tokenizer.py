"""Stage 1: train the region-wise VQ brain tokenizer (DeepSpeed engine shared with stages 0, 2, 3).

Launch (``--set`` overrides any config key, e.g. ``data.dataset=runs/demo/task_world``)::

    # 1 process (CPU)
    python -m fmrilm.stages.tokenizer --config tokenizer_demo
    # 2 CPU ranks on this machine (codebook statistics all-reduced, so every rank's codebook is identical)
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module fmrilm.stages.tokenizer --config tokenizer_demo
    # N GPUs on one node
    deepspeed --num_gpus N --module fmrilm.stages.tokenizer --config tokenizer_demo
    # M nodes x N GPUs (hostfile lines: "node1 slots=N")
    deepspeed --hostfile hostfile --num_nodes M --num_gpus N \
        --module fmrilm.stages.tokenizer --config tokenizer_demo

Outputs under ``out_dir``: ``train/`` (DeepSpeed checkpoints, ``train_log.jsonl`` with losses and
codebook health every ``engine.log_every`` steps) and the tokenizer itself in a directory named
after what it is, e.g. ``tokenizer_schaefer100_fsaverage5_vq_K1024_L1_task_synthetic/``
(``model.safetensors``, ``config.json`` written last, ``stage_config.yaml``, ``eval.json``).
A rerun resumes from the latest checkpoint in ``train/``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fmrilm.config import save_config
from fmrilm.device import init_distributed
from fmrilm.engine import EngineConfig, TrainEngine, stage_main
from fmrilm.errors import InputError
from fmrilm.io import write_json
from fmrilm.seeds import micro_batch_positions
from fmrilm.stages.recipe import Recipe, run_recipe
from fmrilm.tokenizer.config import TokenizerConfig, artifact_name


@dataclass
class TokenizerDataConfig:
    """Where the training scans come from.

    Attributes
    ----------
    dataset : str
        Task or rest dataset directory (kind must match ``tokenizer.input``).
    splits : str
        The run's splits file (``fmrilm splits``): the tokenizer trains on train stimuli of train
        subjects (rest: train subjects) and reports its held-out figures on val.
    tag : str
        Names the data in the artifact directory; default: the dataset's ``source``.
    """

    dataset: str = ""
    splits: str = ""
    tag: str = ""


@dataclass
class TokenizerStageConfig:
    """Stage 1's config; ``rest_tokenizer`` (a trained temporal-patch tokenizer on the same atlas and
    splits, e.g. ``rest_tokenizer_demo``) is carried as the task tokenizer's rest companion: one
    artifact, one fingerprint, rest codes after the task codes in the LM vocabulary."""

    out_dir: str = field(default="", metadata={"required": True})  # fmrilm.config.required_path(): no demo default
    rest_tokenizer: str = ""
    data: TokenizerDataConfig = field(default_factory=TokenizerDataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    eval_batch_size: int = 256


def codebook_rank_spread(model) -> float:
    """Largest |codebook − rank 0's codebook| over ranks (0.0 when they are in sync)."""
    tables = [cb.embed.detach().clone() for cb in model.quantizer.codebooks()]
    if not tables or not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return 0.0
    flat = torch.cat([t.reshape(-1) for t in tables]).float()
    reference = flat.clone()
    torch.distributed.broadcast(reference, src=0)
    spread = (flat - reference).abs().max()
    torch.distributed.all_reduce(spread, op=torch.distributed.ReduceOp.MAX)
    return float(spread)


class TokenizerRecipe(Recipe):
    """Train the brain tokenizer on the run's training scans; save it with its held-out report.

    No export name before any work: the directory is named after the dataset's atlas and source,
    read in :meth:`setup`, so a rerun always runs (resuming from ``train/``).
    """

    name = "tokenizer"

    def __init__(self, cfg: TokenizerStageConfig):
        super().__init__(cfg)
        self.train_set = self.heldout = self.rest = None

    def setup(self) -> None:
        """Validate the config, build the tokenizer, the data splits and the engine."""
        from fmrilm.brain.splits import read_splits
        from fmrilm.tokenizer.data import load_splits, tokenizer_for_dataset, training_record

        cfg = self.cfg
        if not cfg.data.dataset:
            raise InputError("config", "data.dataset", "no dataset given (--set data.dataset=DIR)")
        if not cfg.data.splits:
            raise InputError("config", "data.splits", "no splits file given (write one with `fmrilm splits`, "
                             "then --set data.splits=FILE)")
        splits = read_splits(cfg.data.splits)
        cfg.tokenizer.validate()
        init_distributed()
        world = torch.distributed.get_world_size()
        torch.manual_seed(cfg.engine.seed)  # identical initial weights on every rank
        model = tokenizer_for_dataset(cfg.tokenizer, cfg.data.dataset, sync_codebook=world > 1)
        self.rest = self._rest_companion(model, splits) if cfg.rest_tokenizer else None
        use_text = cfg.tokenizer.contrastive != "none" and cfg.tokenizer.contrastive_weight > 0
        self.train_set, self.heldout = load_splits(cfg.data.dataset, model, splits, use_text)
        model.provenance = training_record(cfg.data.dataset, splits)
        if len(self.train_set) < cfg.engine.micro_batch_size * world:
            raise InputError(cfg.data.dataset, "scans",
                             f"{len(self.train_set)} training scans, fewer than one global batch")
        self.engine = TrainEngine(model, cfg.engine, Path(cfg.out_dir) / "train")

    def _rest_companion(self, model, splits):
        """The configured rest tokenizer, checked (before any training) to fit `model` and the splits."""
        from fmrilm.tokenizer.model import BrainTokenizer

        source = Path(self.cfg.rest_tokenizer) / "config.json"
        rest = BrainTokenizer.from_pretrained(self.cfg.rest_tokenizer, model.atlas_info)
        if (rest.provenance.get("splits") or {}).get("sha256") != splits.record().get("sha256"):
            raise InputError(source, "provenance.splits", f"trained under {rest.provenance.get('splits')}, not "
                             f"this run's splits {splits.record()}: its codebook may have seen held-out subjects")
        model.check_rest(rest, source)  # attached at save: its weights stay out of this stage's optimizer
        return rest

    def train(self) -> int:
        """Optimizer steps up to ``engine.max_steps``, resuming from a checkpoint; returns the last step."""
        from tqdm import tqdm

        engine, e = self.engine, self.cfg.engine
        resumed = engine.load_checkpoint()
        step = resumed[0] if resumed else 0
        bar = tqdm(total=e.max_steps, initial=step, disable=not engine.is_main, desc="tokenizer")
        while step < e.max_steps:
            for micro in range(e.grad_accum_steps):
                positions = micro_batch_positions(len(self.train_set), step * e.grad_accum_steps + micro,
                                                  e.micro_batch_size, engine.rank, engine.world_size, e.seed)
                metrics = engine.train_step(self.train_set.batch(positions))
            step += 1
            bar.update(1)
            if e.log_every > 0 and step % e.log_every == 0:
                engine.log(step, {**metrics, "codebook_rank_spread": codebook_rank_spread(engine.module)})
            if engine.should_checkpoint(step):
                engine.save_checkpoint(step)
        bar.close()
        return step

    def save(self, step: int) -> Path | None:
        """Evaluate on held-out scans and save the tokenizer (main rank writes; all ranks return).

        ``eval.json`` records the configured ``engine.max_steps`` as its steps, whatever `step` a
        resumed run ended on.
        """
        from fmrilm.brain.store import Dataset
        from fmrilm.tokenizer.evaluate import evaluate_tokenizer

        engine, cfg = self.engine, self.cfg
        model = engine.module
        spread = codebook_rank_spread(model)
        out = None
        if engine.is_main:
            tag = cfg.data.tag or str(Dataset(cfg.data.dataset).manifest.get("source", "data"))
            out = Path(cfg.out_dir) / artifact_name(cfg.tokenizer, model.atlas_info, tag)
            report = evaluate_tokenizer(model, self.heldout, cfg.eval_batch_size) if len(self.heldout) else {}
            report.update(codebook_rank_spread=spread, world_size=engine.world_size, steps=cfg.engine.max_steps)
            save_config(cfg, out / "stage_config.yaml")
            write_json(out / "eval.json", report)
            if self.rest is not None:
                model.attach_rest(self.rest, self.cfg.rest_tokenizer)
            model.save_pretrained(out)  # config.json last: marks the artifact complete
            nan = float("nan")
            print(f"tokenizer saved to {out}: held-out r2={report.get('r2', nan):.3f} "
                  f"usage={report.get('usage', nan):.3f} perplexity/K={report.get('perplexity_ratio', nan):.3f}")
        engine.barrier()
        return out


def run(cfg: TokenizerStageConfig) -> Path | None:
    """Train stage 1 (:class:`TokenizerRecipe`); returns the tokenizer directory on the main rank."""
    return run_recipe(TokenizerRecipe(cfg))


def main(argv: list[str] | None = None) -> int:
    return stage_main(argv, __doc__.splitlines()[0], "tokenizer_demo", TokenizerStageConfig, run)


if __name__ == "__main__":
    sys.exit(main())
