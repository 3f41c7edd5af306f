"""Building a BrainLM: backbone (optionally NF4 4-bit), brain vocabulary, LoRA adapters.

With LoRA enabled only the adapters (``targets``, rank and alpha from the config; CorText's default
rank 16 on q/v) and the brain parts (brain embedding projection, delimiter vectors, brain head) are
trained; with ``quantize_4bit`` the frozen base is NF4 through bitsandbytes (QLoRA). With
``freeze_backbone`` (LoRA off) only the brain parts train (CorText's phase 1); ``train_norms`` adds the
backbone's normalisation weights in either case. With neither, the whole backbone trains (the compact
test fixture).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch

from fmrilm.errors import InputError
from fmrilm.llm.backbone import check_backbone_dir, load_causal_lm, load_tokenizer, set_offline
from fmrilm.llm.brain_input import check_brain_input
from fmrilm.llm.config import LLMConfig, LoraSettings
from fmrilm.llm.model import BrainLM
from fmrilm.llm.scan_condition import ScanCondition
from fmrilm.llm.storage import checkpoint_identity
from fmrilm.llm.vocab import BrainEmbedding, extend_tokenizer

META_FILE = "brainlm.json"


@contextlib.contextmanager
def peft_wrapping():
    """Around ``get_peft_model`` / ``PeftModel.from_pretrained``: peft's PeftModel constructor reads
    transformers' deprecated ``is_gradient_checkpointing`` (a FutureWarning on every load since
    transformers 5); the read is inside peft, so there is no call of ours to change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def apply_lora(lm, settings: LoraSettings, train_norms: bool = False):
    """Wrap `lm` with LoRA adapters per `settings` (returned unchanged when LoRA is disabled).

    With `train_norms` the normalisation layers are peft ``modules_to_save``: trained, saved inside the
    adapter (so plain ``PeftModel.from_pretrained`` restores them) and written in by merging.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if not settings.enabled:
        if settings.quantize_4bit:
            raise InputError(
                "lora",
                "quantize_4bit",
                "a 4-bit base cannot be trained without LoRA adapters (set lora.enabled=true)",
            )
        return lm
    names = [name for name, _ in lm.named_modules()]
    missing = [t for t in settings.targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing or not settings.targets:
        raise InputError(
            "lora",
            "targets",
            f"{missing or 'none given'}: no such modules in the backbone "
            f"(e.g. q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
        )
    if settings.quantize_4bit:
        # Casts the unquantized weights (norms, embeddings) to fp32 for stable updates; no
        # activation checkpointing, which would cost time on CPU for no memory need at test scale.
        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        modules_to_save=norm_module_names(lm) if train_norms else None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with peft_wrapping():
        return get_peft_model(lm, config)


def is_norm(module) -> bool:
    """True for normalisation layers (LlamaRMSNorm and other architectures' *Norm modules)."""
    return type(module).__name__.endswith(("Norm", "RMSNorm")) or isinstance(module, torch.nn.LayerNorm)


def norm_module_names(lm) -> list[str]:
    """Distinct last names of the backbone's normalisation modules (Llama: input_layernorm,
    post_attention_layernorm, norm); InputError when it has none."""
    names = sorted({name.rsplit(".", 1)[-1] for name, module in lm.named_modules() if name and is_norm(module)})
    if not names:
        raise InputError("llm", "train_norms", f"{type(lm).__name__} has no normalisation layers")
    return names


def freeze_for_phase_one(lm, train_norms: bool) -> None:
    """CorText's phase 1: no backbone weight trains, except the normalisation layers with `train_norms`."""
    lm.requires_grad_(False)
    if train_norms:
        norm_module_names(lm)  # refuses an architecture without them
        for module in lm.modules():
            if is_norm(module):
                module.requires_grad_(True)


def backbone_parts(model: BrainLM) -> dict[str, torch.Tensor]:
    """Trained weights of a frozen (phase-1) backbone — its norms under ``train_norms`` —, named as in
    the base model; empty otherwise (LoRA keeps them in the adapter, full training saves the whole model)."""
    if hasattr(model.lm, "peft_config") or not model.llm_config.freeze_backbone:
        return {}
    return {name: p.detach().contiguous() for name, p in model.base_lm.named_parameters() if p.requires_grad}


def set_backbone_state(lm, state: dict[str, torch.Tensor], source) -> None:
    """Copy `state` (backbone weights by name) into `lm`; InputError naming names it does not have."""
    own = dict(lm.named_parameters())
    unknown = [k for k in state if k not in own]
    if unknown:
        raise InputError(source, "backbone_parts", f"not parameters of the backbone: {unknown[:5]}")
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value.to(own[name].dtype))


def read_meta(model_dir: str | Path) -> dict | None:
    """The ``brainlm.json`` of a saved or merged model directory, or None if it has none."""
    path = Path(model_dir) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def build_scan_condition(cfg: LLMConfig, code_embeddings, d_model: int, readout=None) -> ScanCondition | None:
    """The scan conditioning `cfg` asks for (None when disabled), starting from stage 1's `readout`."""
    settings = cfg.scan_condition
    if not settings.enabled:
        return None
    if code_embeddings is None:
        raise InputError("llm", "scan_condition", "scan conditioning needs the stage-1 code embeddings")
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    return ScanCondition(code_embeddings, settings.tokens_per_scan, d_model, readout, settings.readout_dim,
                         generator)


def build_brainlm(
    cfg: LLMConfig,
    code_embeddings: torch.Tensor | None = None,
    backbone: str | Path | None = None,
    readout: torch.Tensor | None = None,
    condition_codes: torch.Tensor | None = None,
    backbone_state: dict[str, torch.Tensor] | None = None,
) -> BrainLM:
    """Assemble a trainable BrainLM on a local backbone.

    Parameters
    ----------
    cfg : LLMConfig
        Codebook size, LoRA/QLoRA settings, loss weights, context length, seed.
    code_embeddings : Tensor [K, d_code], optional
        Stage-1 code embeddings. Not needed when the backbone is a merged BrainLM (its brain rows
        are reused).
    backbone : path, optional
        HF model directory; defaults to ``cfg.backbone``.
    readout : Tensor [P·L, d_code, d_text], optional
        Stage 1's contrastive read-out, the starting point of the scan conditioning.
    condition_codes : Tensor [K, d_code], optional
        Code embeddings of the scan conditioning when they differ from `code_embeddings` (a merged
        model, whose brain rows are already projected); defaults to `code_embeddings`.
    backbone_state : dict of str to Tensor, optional
        Trained backbone weights (a phase-1 model's norms, :func:`backbone_parts`) copied in before any
        LoRA wrapping.
    """
    set_offline()
    path = check_backbone_dir(backbone if backbone is not None else cfg.backbone)
    meta = read_meta(path)
    merged = bool(meta and meta.get("merged"))
    if merged and meta["vocab"]["codebook_size"] != cfg.codebook_size:
        raise InputError(
            path,
            "codebook_size",
            f"merged model has {meta['vocab']['codebook_size']} brain tokens, "
            f"config asks for {cfg.codebook_size}",
        )
    tokenizer = load_tokenizer(path)
    vocab = extend_tokenizer(tokenizer, cfg.codebook_size)
    lm = load_causal_lm(path, quantize_4bit=cfg.lora.quantize_4bit)
    if backbone_state:
        set_backbone_state(lm, backbone_state, path)
    text_table = lm.get_input_embeddings().weight
    n_slots = cfg.scan_condition.tokens_per_scan if cfg.parcel_embeddings else 0
    if cfg.parcel_embeddings and n_slots < 1:
        raise InputError("llm", "parcel_embeddings", "needs scan_condition.tokens_per_scan (stage 2 sets it from "
                                                     "the tokenizer)")
    check_brain_input(cfg.brain_input)
    if merged and cfg.brain_input != "codes":
        raise InputError(path, "brain_input", "a merged model's brain rows are its codes' embeddings: it reads codes "
                                              "(train continuous input from the unmerged export)")
    if merged:
        brain_embed = BrainEmbedding.from_table(text_table[vocab.n_text : vocab.size], vocab.codebook_size, n_slots)
    else:
        if code_embeddings is None:
            raise InputError(
                path,
                "code_embeddings",
                "a backbone without brain tokens needs the stage-1 code "
                "embeddings [K, d_code] to initialise them",
            )
        code_embeddings = torch.as_tensor(code_embeddings)
        if code_embeddings.ndim != 2 or code_embeddings.shape[0] != cfg.codebook_size:
            raise InputError(
                "code_embeddings",
                "shape",
                f"expected [{cfg.codebook_size}, d_code], got {tuple(code_embeddings.shape)}",
            )
        generator = torch.Generator().manual_seed(cfg.seed)
        brain_embed = BrainEmbedding(
            code_embeddings,
            text_table.shape[1],
            scale=float(text_table[: vocab.n_text].detach().float().std()),
            generator=generator,
            n_slots=n_slots,
        )
    condition = build_scan_condition(cfg, condition_codes if condition_codes is not None else code_embeddings,
                                     text_table.shape[1], readout)
    torch.manual_seed(cfg.seed)  # LoRA's A matrices draw from the global generator
    lm = apply_lora(lm, cfg.lora, cfg.train_norms)
    if not cfg.lora.enabled and cfg.freeze_backbone:
        freeze_for_phase_one(lm, cfg.train_norms)
    elif not cfg.lora.enabled and cfg.train_norms:
        raise InputError("llm", "train_norms", "needs lora.enabled or freeze_backbone (otherwise all of the "
                                               "backbone trains anyway)")
    model = BrainLM(lm, tokenizer, vocab, brain_embed, cfg.loss_weights, cfg.max_length, condition)
    if merged:
        with torch.no_grad():
            head = model.base_lm.get_output_embeddings().weight
            model.brain_head.weight.copy_(head[vocab.brain_offset : vocab.scan_start])
    model.llm_config = cfg
    model.base_identity = checkpoint_identity(path)
    return model


def trainable_parameters(model: BrainLM) -> dict[str, int]:
    """Counts of trainable and total parameters (for logs)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}
