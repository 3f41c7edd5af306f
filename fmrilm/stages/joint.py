"""Stage 2: joint brain–text modeling (fMRI-LM) with LoRA / QLoRA on the DeepSpeed engine.

Launch (``--set`` overrides any config key)::

    # 1 process (CPU here)
    python -m fmrilm.stages.joint --config joint_demo --set out_dir=runs/demo corpus=runs/demo/corpus \
        tokenizer=runs/demo/tokenizer/<tokenizer dir> llm.backbone=runs/demo/stage0_backbone-llama5m_sp4k
    # 2 CPU ranks on this machine (ZeRO-2)
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --master_port 29600 --module fmrilm.stages.joint \
        --config joint_demo --set ...
    # N GPUs on one node; a big backbone with ZeRO-3 (+ CPU offload) and QLoRA
    deepspeed --num_gpus N --module fmrilm.stages.joint --config joint_demo \
        --set llm.backbone=/models/Llama-3.1-8B engine.deepspeed=zero3 llm.lora.quantize_4bit=true ...
    # M nodes x N GPUs (hostfile lines: "node1 slots=N")
    deepspeed --hostfile hostfile --num_nodes M --num_gpus N --module fmrilm.stages.joint --config joint_demo ...
    # or through the CLI wrapper
    fmrilm train joint --config joint_demo --nproc 2 --set ...

Inputs: the backbone (a stage-0 export or any local HF causal-LM directory), the stage-1 tokenizer
directory (its code embeddings initialise the brain tokens, its contrastive read-out the scan
conditioning of :mod:`fmrilm.llm.scan_condition`) and the corpus, whose tokens must come
from that tokenizer. The loss mixture, with weights ``llm.loss_weights``:

- ``text``: next-token prediction on the text-only samples;
- ``brain``: temporal prediction, the later scans of a run from the earlier ones (``temporal`` samples);
- ``brain_to_text``: a caption or description after its scan(s) (``caption`` / ``describe`` samples);
- ``text_to_brain``: the scan(s) after the caption or description — a seeded
  ``text_to_brain_fraction`` of the caption/describe samples is written in this direction.

Output: ``OUT/stage2_joint-<backbone>-<tokenizer>-step<N>/`` written by ``save_brainlm`` (adapter or
whole backbone + brain parts; optionally ``merged/``, a standalone HF checkpoint), ``stage.json``
last. Checkpoints and ``train_log.jsonl`` (per-objective losses, skipped shards) go to
``OUT/train-stage2_joint-<backbone>-<tokenizer>/``; a rerun resumes, and is a no-op once finished.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fmrilm.corpus.reader import read_split
from fmrilm.engine import EngineConfig, TrainEngine, stage_main
from fmrilm.errors import InputError
from fmrilm.llm.config import LLMConfig
from fmrilm.seeds import stream
from fmrilm.stages import lm_common
from fmrilm.stages.recipe import LMRecipe, run_recipe

STAGE = "joint"
# corpus task → joint objective (caption/describe may also be written text → brain)
TASK_OBJECTIVE = {"text": "text", "temporal": "brain", "caption": "brain_to_text", "describe": "brain_to_text"}


@dataclass
class JointStageConfig:
    """Stage-2 settings (YAML: ``fmrilm/configs/joint_*.yaml``).

    Attributes
    ----------
    out_dir, corpus, tokenizer : str
        Run directory, corpus directory, stage-1 tokenizer directory.
    llm : LLMConfig
        ``llm.backbone`` is the stage-0 export or a local HF directory; ``llm.codebook_size`` is taken
        from the tokenizer.
    tasks : tuple of str
        Corpus tasks used (keys of ``TASK_OBJECTIVE``).
    text_to_brain_fraction : float
        Share of caption/describe samples written text → brain.
    merge : bool
        Also write a standalone merged HF checkpoint into the export (``merged/``).
    """

    out_dir: str = field(default="", metadata={"required": True})  # fmrilm.config.required_path(): no demo default
    corpus: str = ""
    tokenizer: str = ""
    llm: LLMConfig = field(default_factory=LLMConfig)
    tasks: tuple[str, ...] = ("text", "temporal", "caption", "describe")
    text_to_brain_fraction: float = 0.5
    split: str = "train"
    merge: bool = False
    engine: EngineConfig = field(default_factory=EngineConfig)
    force: bool = False


def _check(cfg: JointStageConfig) -> None:
    for key in ("corpus", "tokenizer"):
        if not getattr(cfg, key):
            raise InputError("config", key, f"not given (--set {key}=DIR)")
    unknown = sorted(set(cfg.tasks) - set(TASK_OBJECTIVE))
    if unknown or not cfg.tasks:
        raise InputError("config", "tasks", f"{unknown or 'none'}: joint tasks are {sorted(TASK_OBJECTIVE)}")
    if not 0.0 <= cfg.text_to_brain_fraction <= 1.0:
        raise InputError("config", "text_to_brain_fraction", f"{cfg.text_to_brain_fraction} not in [0, 1]")


def names(cfg: JointStageConfig) -> tuple[Path, Path, dict, str]:
    """(export dir, training dir, tokenizer identity, backbone tag) — decided before any work."""
    _check(cfg)
    _, backbone_tag = lm_common.resolve_backbone(cfg.llm.backbone)
    tokenizer = lm_common.tokenizer_identity(cfg.tokenizer)
    base = f"stage2_{STAGE}-{backbone_tag}-{tokenizer['tag']}"
    out = Path(cfg.out_dir)
    return out / f"{base}-step{cfg.engine.max_steps:06d}", out / f"train-{base}", tokenizer, backbone_tag


def joint_encoder(model, seed: int, text_to_brain_fraction: float, n: int):
    """`encode(sample, index)` for stage 2: the objective follows the task (and a seeded direction draw)."""
    from fmrilm.llm.formatting import encode_joint

    reverse = stream(seed, "joint.direction").random(n) < text_to_brain_fraction

    def encode(sample: dict, index: int) -> dict:
        meta, tokens = sample["json"], np.asarray(sample["tokens.npy"]).astype(np.int64)
        objective = TASK_OBJECTIVE[meta["task"]]
        # in-context shots (stage-3 material) lead the token rows; the query's scans are the rest
        n_shots = len(meta.get("shots") or [])
        query = tokens[n_shots:]
        if objective == "brain_to_text" and reverse[index]:
            objective = "text_to_brain"
        item = encode_joint(model.tokenizer, model.vocab, objective, text=meta["answer"] if objective != "brain"
                            else None, tokens=query if objective != "text" else None, source=sample["__key__"])
        # where the query's scans came from (continuous brain input looks their latents up)
        refs = meta.get("scans")
        return {**item, "scans": [] if objective == "text" else refs and refs[n_shots:], "source": sample["__key__"]}

    return encode


def build_model(cfg: JointStageConfig):
    """The stage-2 BrainLM on the backbone, brain parts initialised from the tokenizer's exports.

    Fills ``cfg.llm.codebook_size`` and ``cfg.llm.scan_condition.tokens_per_scan`` from the tokenizer.
    """
    from fmrilm.llm.peft_setup import build_brainlm

    hf_dir, _ = lm_common.resolve_backbone(cfg.llm.backbone)
    exports = lm_common.load_tokenizer_exports(cfg.tokenizer)
    cfg.llm.codebook_size = int(exports.code_embeddings.shape[0])
    cfg.llm.scan_condition.tokens_per_scan = exports.tokens_per_scan
    return build_brainlm(cfg.llm, exports.code_embeddings, hf_dir, exports.text_readout)


class JointRecipe(LMRecipe):
    """Joint brain–text training of BrainLM (LoRA / QLoRA) on the corpus's task mixture."""

    name = STAGE

    def __init__(self, cfg: JointStageConfig):
        export_dir, train_dir, tokenizer, backbone_tag = names(cfg)
        super().__init__(cfg, export_dir, train_dir)
        self.tokenizer_identity, self.backbone_tag = tokenizer, backbone_tag

    def setup(self) -> None:
        """Build BrainLM (LoRA/QLoRA), encode the corpus, wrap it in the engine."""
        from fmrilm.llm.peft_setup import trainable_parameters

        cfg = self.cfg
        lm_common.check_corpus_tokenizer(cfg.corpus, cfg.split, self.tokenizer_identity)
        model = build_model(cfg)
        samples, self.skipped = read_split(cfg.corpus, cfg.split, cfg.tasks,
                                           max_skipped=cfg.engine.max_skipped_shards)
        encode = joint_encoder(model, cfg.llm.seed, cfg.text_to_brain_fraction, len(samples))
        self.data = lm_common.training_set(samples, encode, model.max_length, cfg.engine,
                                           latents=lm_common.scan_latents(model, cfg.corpus))
        self.pad_id, self.max_length = model.tokenizer.eos_token_id, model.max_length
        self.engine = TrainEngine(model, cfg.engine, self.train_dir)
        if self.engine.is_main:
            counts = trainable_parameters(model)
            print(f"joint: {self.data.size} samples ({len(self.data.items)} visited by this run), "
                  f"{counts['trainable']:,} of {counts['total']:,} parameters trainable, "
                  f"{self.skipped.shards} corrupt shards skipped", flush=True)

    def save(self, step: int) -> Path | None:
        """Export the model with ``save_brainlm`` (and ``merge_to_hf`` into ``merged/`` if asked)."""
        from fmrilm.llm.checkpoint import merge_to_hf, save_brainlm

        engine, cfg = self.engine, self.cfg

        def save(out: Path) -> None:
            save_brainlm(engine.module, out, overwrite=True)
            if cfg.merge:
                merge_to_hf(engine.module, out / "merged", overwrite=True)

        return lm_common.export(engine, self.export_dir, save, cfg, {
            "stage": STAGE, "backbone_tag": self.backbone_tag, "tokenizer_tag": self.tokenizer_identity["tag"],
            "tokenizer": self.tokenizer_identity, "steps": step, "world_size": engine.world_size, "merged": cfg.merge})


def run(cfg: JointStageConfig) -> Path | None:
    """Train stage 2 (:class:`JointRecipe`); returns the export directory on the main rank."""
    return run_recipe(JointRecipe(cfg))


def main(argv: list[str] | None = None) -> int:
    return stage_main(argv, __doc__.splitlines()[0], "joint_demo", JointStageConfig, run)


if __name__ == "__main__":
    sys.exit(main())
