"""Typed configuration of the brain tokenizer (loaded from the ``tokenizer:`` section of a YAML file).

Every field that changes the artifact is stored in the tokenizer's ``config.json`` so that
:meth:`fmrilm.tokenizer.model.BrainTokenizer.from_pretrained` rebuilds the same module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fmrilm.errors import InputError

QUANTIZER_KINDS = ("vq", "rvq", "fsq")
CONTRASTIVE_KINDS = ("clip", "siglip", "none")
INPUT_KINDS = ("task", "rest")


@dataclass
class QuantizerConfig:
    """Which vector-quantize-pytorch quantizer to build and with which anti-collapse tools.

    Attributes
    ----------
    kind : {"vq", "rvq", "fsq"}
        ``VectorQuantize`` (one code per parcel), ``ResidualVQ`` (`levels` codes per parcel) or ``FSQ``.
    codebook_size : int
        K. For FSQ it must equal the product of `fsq_levels`.
    levels : int
        Residual levels L (``rvq`` only; 1 otherwise).
    codebook_dim : int or None
        Low-dimensional codebook: codes live in this many dimensions behind a learned projection
        (the library's ``codebook_dim``), which keeps more codes in use. None = the code dimension.
    use_cosine_sim : bool
        Cosine-similarity (unit-norm) codebook instead of Euclidean.
    shared_codebook : bool
        ``rvq`` only: one codebook for all levels, so the brain vocabulary stays K (else L·K).
    kmeans_init, kmeans_iters : bool, int
        Initialise the codebook by k-means on the first batch.
    decay : float
        EMA decay of the codebook updates.
    threshold_ema_dead_code : float
        Codes whose EMA cluster size falls below this are replaced by batch vectors (0 = off).
    rotation_trick : bool
        Rotation-trick gradient estimator through the quantizer (else straight-through).
    commitment_weight : float
    fsq_levels : tuple of int
        ``fsq`` only: levels per FSQ dimension.
    """

    kind: str = "vq"
    codebook_size: int = 1024
    levels: int = 1
    codebook_dim: int | None = None
    use_cosine_sim: bool = False
    shared_codebook: bool = True
    kmeans_init: bool = True
    kmeans_iters: int = 10
    decay: float = 0.8
    threshold_ema_dead_code: float = 2.0
    rotation_trick: bool = True
    commitment_weight: float = 0.25
    fsq_levels: tuple[int, ...] = (8, 8, 4, 4)

    def validate(self, source: str = "tokenizer.quantizer") -> None:
        if self.kind not in QUANTIZER_KINDS:
            raise InputError(source, "kind", f"{self.kind!r} not in {QUANTIZER_KINDS}")
        if self.codebook_size < 2:
            raise InputError(source, "codebook_size", f"{self.codebook_size} < 2")
        if self.levels < 1 or (self.kind != "rvq" and self.levels != 1):
            raise InputError(source, "levels", f"{self.levels}: must be 1 for {self.kind}, >= 1 for rvq")
        if self.kind == "fsq" and math.prod(self.fsq_levels) != self.codebook_size:
            raise InputError(source, "fsq_levels", f"product {math.prod(self.fsq_levels)} != codebook_size "
                             f"{self.codebook_size}")


@dataclass
class TokenizerConfig:
    """Architecture of the region-wise VQ tokenizer.

    Attributes
    ----------
    input : {"task", "rest"}
        Task scans (one value per vertex, grouped per parcel) or rest windows (W TRs per parcel).
    window : int
        W, the temporal window in TRs for ``rest`` input.
    hidden_dim : int
        Width of each parcel's encoder/decoder MLP.
    code_dim : int
        Dimension of the encoder output that is quantized (the library's ``dim``).
    quantizer : QuantizerConfig
    contrastive : {"clip", "siglip", "none"}
        Loss aligning the pooled quantized scan embedding with the MiniLM embedding of its text.
    contrastive_weight : float
    text_dim : int
        Dimension of the text embeddings (384 for MiniLM).

    Training precision is the engine's (``engine.precision``); the quantizer always runs in fp32
    and inference (:meth:`BrainTokenizer.encode`) always in fp32, so codes do not depend on it.
    """

    input: str = "task"
    window: int = 16
    hidden_dim: int = 128
    code_dim: int = 64
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    contrastive: str = "clip"
    contrastive_weight: float = 0.1
    text_dim: int = 384

    def validate(self, source: str = "tokenizer") -> None:
        if self.input not in INPUT_KINDS:
            raise InputError(source, "input", f"{self.input!r} not in {INPUT_KINDS}")
        if self.contrastive not in CONTRASTIVE_KINDS:
            raise InputError(source, "contrastive", f"{self.contrastive!r} not in {CONTRASTIVE_KINDS}")
        for name in ("window", "hidden_dim", "code_dim", "text_dim"):
            if getattr(self, name) < 1:
                raise InputError(source, name, f"{getattr(self, name)} < 1")
        self.quantizer.validate(f"{source}.quantizer")

    @property
    def levels(self) -> int:
        return self.quantizer.levels

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids (rows of the code-embedding table)."""
        q = self.quantizer
        separate = q.kind == "rvq" and not q.shared_codebook
        return q.codebook_size * (q.levels if separate else 1)


def artifact_name(cfg: TokenizerConfig, atlas_info: dict, data_tag: str) -> str:
    """Directory name that says what a tokenizer is: atlas, quantizer, K, levels, input and data.

    >>> artifact_name(TokenizerConfig(), {"name": "schaefer100_fsaverage5"}, "synthetic")
    'tokenizer_schaefer100_fsaverage5_vq_K1024_L1_task_synthetic'
    """
    q = cfg.quantizer
    tag = "".join(c if c.isalnum() or c in "-." else "-" for c in data_tag)
    return f"tokenizer_{atlas_info['name']}_{q.kind}_K{q.codebook_size}_L{q.levels}_{cfg.input}_{tag}"
