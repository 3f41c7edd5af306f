"""Typed settings of the brain–language model: backbone bootstrap, brain vocabulary, LoRA, losses.

Loaded from YAML with ``fmrilm.config.load_config(LLMConfig, path, overrides)``; every field has a
default so a config file only names what it changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The objectives a training sample can belong to; per-objective losses are reported under these names.
OBJECTIVES = ("text", "brain", "brain_to_text", "text_to_brain", "instruction")


@dataclass
class BootstrapConfig:
    """The compact Llama-architecture decoder and SentencePiece tokenizer built by stage 0.

    The default (~5M parameters, 4000-token vocabulary) trains on two CPU cores; tests use a tinier one.
    """

    vocab_size: int = 4000
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 688
    max_position_embeddings: int = 2048
    seed: int = 0


@dataclass
class LoraSettings:
    """LoRA / QLoRA settings (CorText: rank 16 on the attention query and value projections)."""

    enabled: bool = True
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    quantize_4bit: bool = False  # QLoRA: NF4 base weights through bitsandbytes


@dataclass
class LossWeights:
    """Weights of the stage-2/3 loss mixture, one per objective in ``OBJECTIVES``."""

    text: float = 1.0
    brain: float = 1.0
    brain_to_text: float = 1.0
    text_to_brain: float = 1.0
    instruction: float = 1.0

    def as_list(self) -> list[float]:
        return [float(getattr(self, name)) for name in OBJECTIVES]


@dataclass
class ScanConditionSettings:
    """Scan-summary conditioning (:mod:`fmrilm.llm.scan_condition`).

    ``tokens_per_scan`` is stage 1's P·L; stage 2 fills it in from the tokenizer, as it does the
    codebook size. ``readout_dim`` is the width of a read-out learned from scratch, used only when
    the tokenizer has no contrastive read-out to start from.
    """

    enabled: bool = True
    tokens_per_scan: int = 0
    readout_dim: int = 256


@dataclass
class LLMConfig:
    """Everything needed to build a :class:`fmrilm.llm.model.BrainLM`.

    ``backbone`` is a local Hugging Face causal-LM directory (e.g. Llama-3.1-8B) or a stage-0 export.

    What of the backbone trains: with ``lora.enabled`` only the adapters (CorText phase 2, fMRI-LM);
    with ``freeze_backbone`` (and LoRA off) nothing of it — CorText's phase 1, where only the brain
    parts (projection, delimiters, brain head, scan conditioning) learn; with neither, all of it (the
    compact test fixture). ``train_norms`` also trains the backbone's RMSNorm/LayerNorm weights under
    LoRA or a frozen backbone (CorText's phase 1 trains the layer norms); they are saved beside the
    adapter and merged with it. ``parcel_embeddings`` adds a learned parcel-position vector to each
    brain token by its slot in the scan (``scan_condition.tokens_per_scan`` slots, CorText's region
    embeddings; :class:`~fmrilm.llm.vocab.BrainEmbedding`). ``brain_input`` is what a brain token's input
    embedding is made from: ``codes`` (its codebook vector) or ``continuous`` (the tokenizer encoder's
    output for that parcel, fMRI-LM's released code; the codes stay the targets,
    :mod:`fmrilm.llm.brain_input`).
    """

    backbone: str | None = None
    codebook_size: int = 1024
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    scan_condition: ScanConditionSettings = field(default_factory=ScanConditionSettings)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    freeze_backbone: bool = False
    train_norms: bool = False
    parcel_embeddings: bool = False
    brain_input: str = "codes"
    max_length: int = 1024
    seed: int = 0
