"""The language-model backbone: a local Hugging Face checkpoint, or a compact one bootstrapped here.

Real use points ``--backbone PATH`` at a local causal-LM directory (Llama-3.1-8B). Nothing is ever
fetched from the hub: loading sets the offline flags and passes ``local_files_only``. Without a
checkpoint, stage 0 calls :func:`bootstrap_backbone`, which trains a byte-fallback SentencePiece BPE
tokenizer on the corpus's text-only data (so the novel category names are in its vocabulary) and
initialises a compact ``LlamaForCausalLM``; both are saved as an ordinary HF model directory that
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from fmrilm.config import save_config
from fmrilm.errors import InputError
from fmrilm.io import atomic_dir
from fmrilm.llm.config import BootstrapConfig

# SentencePiece reserves 256 byte pieces (byte fallback) and 3 specials before any learned piece.
_MIN_VOCAB = 256 + 3 + 64
_HOW_TO_PROVIDE = (
    "pass --backbone PATH to a local Hugging Face causal-LM directory (e.g. Llama-3.1-8B), "
    "or run stage 0 to bootstrap the compact default backbone"
)


def set_offline() -> None:
    """Forbid hub access for everything loaded in this process."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"


def check_backbone_dir(path: str | Path | None) -> Path:
    """`path` as a Path if it is a HF causal-LM checkpoint; otherwise InputError saying how to get one."""
    if path is None:
        raise InputError("backbone", "path", f"no backbone given: {_HOW_TO_PROVIDE}")
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "backbone", f"no such directory: {_HOW_TO_PROVIDE}")
    if not (path / "config.json").is_file():
        raise InputError(
            path, "config.json", f"missing, not a Hugging Face model directory: {_HOW_TO_PROVIDE}"
        )
    return path


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_tokenizer(path: str | Path):
    """The text tokenizer of a local checkpoint directory (offline); InputError when it has none."""
    from transformers import AutoTokenizer

    set_offline()
    path = check_backbone_dir(path)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise InputError(path, "tokenizer", f"no tokenizer files ({', '.join(_TOKENIZER_FILES)}): copy the "
                                            "checkpoint's tokenizer into the directory")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise InputError(path, "tokenizer", f"cannot be loaded: {err}") from None


def check_tokenizer(path: str | Path):
    """The checkpoint's tokenizer, checked for what the sequences need (BOS/EOS or a chat template)."""
    tokenizer = load_tokenizer(path)
    if tokenizer.eos_token_id is None or (tokenizer.bos_token_id is None and not tokenizer.chat_template):
        raise InputError(path, "tokenizer", "needs an EOS token and a BOS token or a chat template "
                                            "(instructions end with EOS and start with BOS or the template)")
    return tokenizer


def load_causal_lm(path: str | Path, quantize_4bit: bool = False, dtype: torch.dtype = torch.float32):
    """Load a local causal LM, optionally with NF4 4-bit base weights (QLoRA) through bitsandbytes.

    Parameters
    ----------
    path : path
        Hugging Face model directory.
    quantize_4bit : bool
        Quantize every linear layer except the output head to NF4; computation stays in `dtype`.
    dtype : torch.dtype
        Dtype of the unquantized weights and of the 4-bit layers' computation.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    set_offline()
    path = check_backbone_dir(path)
    kwargs = {"local_files_only": True, "dtype": dtype}
    if quantize_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
        # bitsandbytes quantizes while loading onto the device, so the device must be named up front.
        kwargs["device_map"] = {"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"}
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def train_text_tokenizer(texts: list[str], vocab_size: int, seed: int = 0):
    """Train a byte-fallback SentencePiece BPE model on `texts`; return it as a HF ``LlamaTokenizer``.

    The vocabulary and merges are read through the sentencepiece library itself rather than by
    parsing the .model protobuf, so no protobuf dependency is needed; the resulting tokenizer encodes
    exactly as the SentencePiece model does. Brain tokens are *not* trained in: they are added later
    by :mod:`fmrilm.llm.vocab`, so one text backbone serves any codebook size.
    """
    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise InputError("texts", "corpus", "no non-empty text to train the tokenizer on")
    if vocab_size < _MIN_VOCAB:
        raise InputError(
            "bootstrap", "vocab_size", f"{vocab_size} < {_MIN_VOCAB} (256 byte pieces + specials + merges)"
        )
    model = io.BytesIO()
    spm.set_random_generator_seed(seed + 1)  # sentence sampling is random; results follow the seed
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        # Too little text for the requested size shrinks the vocabulary instead of failing.
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        # Identity normalization keeps the text as written, matching the HF tokenizer's (none).
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        max_sentence_length=1 << 16,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    # SentencePiece BPE numbers pieces in merge order, so id order is merge priority.
    return LlamaTokenizer(
        vocab=vocab,
        merges=generate_merges(vocab, None),
        add_bos_token=True,
        add_eos_token=False,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def bootstrap_backbone(
    texts: list[str], out_dir: str | Path, cfg: BootstrapConfig, overwrite: bool = False
) -> Path:
    """Stage 0 default: train a tokenizer on `texts` and save a freshly initialised compact Llama.

    Parameters
    ----------
    texts : list of str
        The corpus's text-only data (captions, QA, descriptions, category names).
    out_dir : path
        Output HF model directory (config.json, model.safetensors, tokenizer files, bootstrap.yaml).
    cfg : BootstrapConfig
        Architecture and tokenizer size; `cfg.seed` fixes the initial weights.

    Returns
    -------
    Path
        `out_dir`, loadable with ``AutoModelForCausalLM.from_pretrained(out_dir)``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg.hidden_size % cfg.num_heads:
        raise InputError(
            "bootstrap", "num_heads", f"hidden_size {cfg.hidden_size} is not divisible by {cfg.num_heads}"
        )
    tokenizer = train_text_tokenizer(texts, cfg.vocab_size, cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    with atomic_dir(out_dir, overwrite) as tmp:
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_config(cfg, tmp / "bootstrap.yaml")
    return Path(out_dir)
