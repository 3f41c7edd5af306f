"""Saving, loading and merging BrainLM checkpoints.

A saved model directory::

    DIR/brainlm.json               format, base identity (name, path, fingerprint, and the path relative
                                   to DIR, which wins when the run was moved or copied), vocab, config
    DIR/adapter/                   peft LoRA adapter (LoRA runs), kept apart from ...
    DIR/brain_parts.safetensors    ... the other trainable weights: brain embedding, brain head and
                                   scan conditioning
    DIR/backbone_parts.safetensors a frozen backbone's trained norms (``train_norms``; under LoRA they are
                                   peft ``modules_to_save`` inside adapter/)
    DIR/backbone/                  the whole fine-tuned HF model instead of adapter/ (runs that train
                                   the whole backbone); a frozen backbone (``freeze_backbone``, CorText
                                   phase 1) is referenced like an adapter's base and not copied

:func:`load_brainlm` is the one call that loads it (or a merged directory); it refuses an adapter
whose recorded base differs from the backbone it is given, naming both. :func:`merge_to_hf` writes a
standalone HF checkpoint: LoRA merged into full-precision base weights, the vocabulary resized, brain
embeddings written into the input table and the brain head into the output rows of the brain tokens.
A plain HF model has no place for the scan conditioning, so its weights go beside the merged model in
``scan_condition.safetensors``, which :func:`load_brainlm` applies (a consumer that loads the merged
directory with transformers alone gets the model without it). Both writers take ``write_extra``: further
files written into the scratch directory before the export is complete (a captioner's retriever is
saved that way, by the layer that composes model and retriever).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fmrilm.config import from_dict
from fmrilm.errors import InputError
from fmrilm.io import atomic_dir, portable_path, read_json, write_json
from fmrilm.llm.backbone import check_backbone_dir, load_causal_lm
from fmrilm.llm.config import LLMConfig, LoraSettings
from fmrilm.llm.model import BRAIN_PARTS_PREFIXES, BrainLM
from fmrilm.llm.peft_setup import META_FILE, backbone_parts, build_brainlm, peft_wrapping
from fmrilm.llm.storage import checkpoint_identity

FORMAT_VERSION = 1
BRAIN_PARTS = "brain_parts.safetensors"
BACKBONE_PARTS = "backbone_parts.safetensors"
SCAN_CONDITION_FILE = "scan_condition.safetensors"
CONDITION_PREFIX = "scan_condition."
SLOTS_KEY = "brain_embed.slots"  # parcel-position embeddings: like the conditioning, no place in a plain HF model


def _is_peft(model: BrainLM) -> bool:
    return hasattr(model.lm, "peft_config")


def _weights_kind(model: BrainLM) -> str:
    """How the backbone is saved: ``adapter`` (LoRA), ``frozen`` (base referenced) or ``backbone`` (whole)."""
    if _is_peft(model):
        return "adapter"
    return "frozen" if model.llm_config.freeze_backbone else "backbone"


def save_brainlm(model: BrainLM, out_dir: str | Path, overwrite: bool = False,
                 write_extra: Callable[[Path], None] | None = None) -> Path:
    """Save the trainable state of `model` (adapter or whole backbone, plus brain parts) atomically.

    `write_extra(directory)`, if given, writes further files into the export before it is complete.
    """
    kind = _weights_kind(model)
    with atomic_dir(out_dir, overwrite) as tmp:
        if kind == "adapter":
            model.lm.save_pretrained(tmp / "adapter")
            _portable_adapter_base(tmp / "adapter", Path(out_dir) / "adapter", model.base_identity["path"])
        elif kind == "backbone":
            model.lm.save_pretrained(tmp / "backbone")
            model.tokenizer.save_pretrained(tmp / "backbone")
        save_file(
            {k: v.detach().contiguous() for k, v in model.brain_state_dict().items()}, tmp / BRAIN_PARTS
        )
        extra = backbone_parts(model)
        if extra:
            save_file(extra, tmp / BACKBONE_PARTS)
        if write_extra is not None:
            write_extra(tmp)
        write_json(
            tmp / META_FILE,
            {
                "format_version": FORMAT_VERSION,
                "merged": False,
                "weights": kind,
                "base": {**model.base_identity,
                         "relative_path": os.path.relpath(model.base_identity["path"], Path(out_dir).resolve())},
                "vocab": model.vocab.to_dict(),
                "config": dataclasses.asdict(model.llm_config),
            },
        )
    return Path(out_dir)


def _portable_adapter_base(written: Path, final: Path, base) -> None:
    """Point peft's ``adapter_config.json`` at the base relative to the adapter when both lie in one run.

    peft records the path the base was loaded from (absolute); :func:`load_brainlm` goes by
    ``brainlm.json`` instead, so this only keeps the file from naming another run's backbone once a run
    is moved or copied (a relative path there is relative to ``adapter/``).
    """
    path = written / "adapter_config.json"
    config = read_json(path)
    config["base_model_name_or_path"] = portable_path(base, final)
    write_json(path, config)


def load_brainlm(model_dir: str | Path, backbone: str | Path | None = None,
                 add_lora: LoraSettings | None = None) -> BrainLM:
    """Load a saved or merged BrainLM in one call.

    Parameters
    ----------
    model_dir : path
        Written by :func:`save_brainlm` or :func:`merge_to_hf`.
    backbone : path, optional
        Base checkpoint of an adapter, when it has moved from the path recorded at save time. It must
        be the same checkpoint (same fingerprint): an adapter made for another base is refused.
    add_lora : LoraSettings, optional
        New LoRA (or QLoRA) adapters on a model saved with a frozen backbone (CorText's phase 2
        starting from phase 1); refused for a model that already has adapters or a trained backbone.
    """
    model_dir = Path(model_dir)
    meta = read_json(model_dir / META_FILE)
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(
            model_dir / META_FILE, "format_version", f"{meta.get('format_version')} is not {FORMAT_VERSION}"
        )
    if meta["merged"]:
        cfg = LLMConfig(codebook_size=meta["vocab"]["codebook_size"])
        cfg.lora.enabled = False
        path = model_dir / SCAN_CONDITION_FILE
        parts = load_file(path) if path.is_file() else {}
        _configure_condition(cfg, parts)
        model = build_brainlm(cfg, None, model_dir, parts.get(f"{CONDITION_PREFIX}readout"),
                              parts.get(f"{CONDITION_PREFIX}codes"))
        # brain embedding and head are already rows of the merged tables; only the conditioning loads
        return _load_parts(model, parts, path, (CONDITION_PREFIX, SLOTS_KEY))
    cfg = from_dict(LLMConfig, meta["config"], str(model_dir / META_FILE))
    if add_lora is not None and add_lora.enabled:
        if meta["weights"] != "frozen":
            raise InputError(model_dir, "add_lora", f"the model's backbone is saved as {meta['weights']!r}; new "
                                                    "adapters go only on a frozen-backbone (phase-1) model")
        cfg.lora = add_lora
    parts = load_file(model_dir / BRAIN_PARTS)
    _configure_condition(cfg, parts)
    readout = parts.get(f"{CONDITION_PREFIX}readout")
    if meta["weights"] == "backbone":
        model = build_brainlm(cfg, parts["brain_embed.codes"], model_dir / "backbone", readout)
    else:
        base = check_backbone_dir(backbone if backbone is not None else _recorded_base(model_dir, meta["base"]))
        found, wanted = checkpoint_identity(base), meta["base"]
        if found["fingerprint"] != wanted["fingerprint"]:
            raise InputError(
                model_dir,
                "base",
                f"adapter was made for base '{wanted['name']}' ({wanted['path']}, "
                f"fingerprint {wanted['fingerprint'][:12]}) but the backbone is "
                f"'{found['name']}' ({found['path']}, fingerprint "
                f"{found['fingerprint'][:12]})",
            )
        extra = model_dir / BACKBONE_PARTS
        model = build_brainlm(cfg, parts["brain_embed.codes"], base, readout,
                              backbone_state=load_file(extra) if extra.is_file() else None)
        if meta["weights"] == "adapter":
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(
                model.lm, load_file(model_dir / "adapter" / "adapter_model.safetensors")
            )
            if getattr(result, "unexpected_keys", None):
                raise InputError(
                    model_dir / "adapter", "weights", f"unexpected adapter keys {result.unexpected_keys[:3]}"
                )
    return _load_parts(model, parts, model_dir / BRAIN_PARTS)


def _recorded_base(model_dir: Path, base: dict) -> Path | str:
    """The adapter's base: at its path relative to the model when the same checkpoint (fingerprint) is
    there — a run moved or copied whole uses its own backbone —, else at the absolute path saved."""
    near = model_dir / base["relative_path"] if "relative_path" in base else None
    if near is not None and (near / "config.json").is_file() \
            and checkpoint_identity(near)["fingerprint"] == base["fingerprint"]:
        return near
    return base["path"]


def _configure_condition(cfg: LLMConfig, parts: dict) -> None:
    """Scan conditioning and parcel-position embeddings as the saved weights have them: on with their
    shape, or off when absent."""
    readout = parts.get(f"{CONDITION_PREFIX}readout")
    cfg.scan_condition.enabled = readout is not None
    cfg.parcel_embeddings = SLOTS_KEY in parts
    for tensor in (parts.get(SLOTS_KEY), readout):
        if tensor is not None:
            cfg.scan_condition.tokens_per_scan = int(tensor.shape[0])


def _load_parts(model: BrainLM, parts: dict, source: Path, prefixes=BRAIN_PARTS_PREFIXES) -> BrainLM:
    """Load the brain parts into `model`; InputError naming the keys (under `prefixes`) that do not fit."""
    missing, unexpected = model.load_state_dict(parts, strict=False)
    wrong = unexpected + [k for k in missing if k.startswith(prefixes)]
    if wrong:
        raise InputError(source, "keys", f"do not match the model: {wrong[:5]}")
    return model


def merge_to_hf(
    model: BrainLM, out_dir: str | Path, overwrite: bool = False, dtype: torch.dtype = torch.float32,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write `model` as a standalone HF causal-LM directory over the extended vocabulary.

    LoRA is merged into a full-precision reload of the base rather than into the live model, so the
    model being trained is untouched and a QLoRA adapter is not merged into lossy 4-bit weights.
    `write_extra(directory)`, if given, writes further files into it before it is complete. A model
    reading continuous brain input is refused: the merged rows are its codes' embeddings, so the
    checkpoint would be another model.
    """
    if model.llm_config.brain_input != "codes":
        raise InputError("merge", "brain_input", f"{model.llm_config.brain_input!r}: a merged checkpoint's brain rows "
                         "are code embeddings, it cannot read encoder outputs (set merge=false)")
    with atomic_dir(out_dir, overwrite) as tmp:
        if _is_peft(model):
            from peft import PeftModel

            model.lm.save_pretrained(tmp / "_adapter")
            base = load_causal_lm(check_backbone_dir(model.base_identity["path"]), dtype=dtype)
            with peft_wrapping():
                lm = PeftModel.from_pretrained(base, tmp / "_adapter").merge_and_unload()
            shutil.rmtree(tmp / "_adapter")
        else:
            lm = copy.deepcopy(model.lm).to(dtype)
        vocab = model.vocab
        if getattr(lm.config, "tie_word_embeddings", False):
            # The brain head and the brain input embeddings differ, so one shared table cannot hold both.
            lm.config.tie_word_embeddings = False
            lm.get_output_embeddings().weight = torch.nn.Parameter(
                lm.get_input_embeddings().weight.detach().clone()
            )
        lm.resize_token_embeddings(vocab.size, mean_resizing=False)
        with torch.no_grad():
            lm.get_input_embeddings().weight[vocab.n_text : vocab.size] = model.brain_embed.table().to(dtype)
            head = lm.get_output_embeddings().weight
            head[vocab.brain_offset : vocab.scan_start] = model.brain_head.weight.to(dtype)
            head[vocab.scan_start : vocab.size] = 0.0  # delimiters are placed, never predicted
        lm.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
        condition = {k: v.detach().contiguous() for k, v in model.brain_state_dict().items()
                     if k.startswith((CONDITION_PREFIX, SLOTS_KEY))}
        if condition:
            save_file(condition, tmp / SCAN_CONDITION_FILE)
        if write_extra is not None:
            write_extra(tmp)
        write_json(
            tmp / META_FILE,
            {
                "format_version": FORMAT_VERSION,
                "merged": True,
                "vocab": vocab.to_dict(),
                "merged_from": model.base_identity,
            },
        )
    return Path(out_dir)
