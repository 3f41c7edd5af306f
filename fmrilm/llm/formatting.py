"""Training sequences: joint brain–text samples (stage 2) and chat-formatted instructions (stage 3).

Every encoder returns ``{"input_ids": [...], "labels": [...], "objective": int}`` with labels aligned
to the inputs (the model shifts them) and ``IGNORE`` wherever no loss applies: prompts, the BOS
token, padding and the structural delimiters. ``<scan>`` in a prompt or answer is a placeholder for
one scan, filled in order from the sample's token array [n_scans, P·L].

Instruction samples use the backbone's own chat template (SmolLM2's and Llama-3.1's ``<|im_start|>`` /
``<|start_header_id|>`` turns), rendered once around a placeholder user turn, so the brain ids sit
inside the user message exactly where the prompt puts them; the answer ends with the tokenizer's EOS
(the template's end-of-turn). A tokenizer without a template (the test fixture's) uses::

    <s>### User:\\n{prompt}\\n### Assistant:\\n{answer}</s>

Text pieces are tokenized apart from the brain ids and from each other and then concatenated, so the
answer's tokens are exactly the supervised ones by construction; :func:`check_answer_mask` verifies
that on every sample and raises if prompt and answer masking do not line up.
"""

from __future__ import annotations

import numpy as np
import torch

from fmrilm.errors import InputError
from fmrilm.llm.brain_input import ScanLatents, pad_latents
from fmrilm.llm.config import OBJECTIVES
from fmrilm.llm.model import IGNORE
from fmrilm.llm.vocab import SCAN_START, BrainVocab

USER_HEADER = "### User:\n"
ASSISTANT_HEADER = "\n### Assistant:\n"


def text_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a text piece, without BOS/EOS."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _with_scans(tokenizer, vocab: BrainVocab, text: str, scans: list[np.ndarray], source: str) -> list[int]:
    """Ids of `text` with its ``<scan>`` placeholders replaced, in order, by `scans` (one each)."""
    pieces = text.split(SCAN_START)
    if len(pieces) - 1 != len(scans):
        raise InputError(
            source, "tokens", f"{len(pieces) - 1} {SCAN_START} placeholders for {len(scans)} scans"
        )
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i:
            ids += vocab.run_ids(scans[i - 1][None], source)
        if piece:
            ids += text_ids(tokenizer, piece)
    return ids


def _scan_rows(tokens, source: str) -> list[np.ndarray]:
    if tokens is None:
        return []
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise InputError(source, "tokens", f"expected [n_scans, P·L], got shape {tokens.shape}")
    return list(tokens)


def _label_new_only(ids: list[int], vocab: BrainVocab) -> list[int]:
    """Labels for supervised ids: the id itself, except delimiters which are never predicted."""
    return [IGNORE if i >= vocab.scan_start else i for i in ids]


_USER_PLACEHOLDER = "\x00fmrilm-user-turn\x00"


def chat_frame(tokenizer) -> tuple[list[int], list[int]]:
    """Ids before and after the user's message in a one-turn chat that ends with the assistant header.

    Rendered from the tokenizer's chat template around a placeholder (cached on the tokenizer), or
    the fallback ``### User:`` frame when it has no template.
    """
    cached = getattr(tokenizer, "_fmrilm_chat_frame", None)
    if cached is not None:
        return cached
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": _USER_PLACEHOLDER}],
                                                 add_generation_prompt=True, tokenize=False)
        if rendered.count(_USER_PLACEHOLDER) != 1:
            raise InputError("tokenizer", "chat_template", "does not render the user message exactly once")
        before, after = rendered.split(_USER_PLACEHOLDER)
        frame = (text_ids(tokenizer, before), text_ids(tokenizer, after))
    else:
        frame = ([tokenizer.bos_token_id, *text_ids(tokenizer, USER_HEADER)], text_ids(tokenizer, ASSISTANT_HEADER))
    tokenizer._fmrilm_chat_frame = frame
    return frame


def encode_prompt(
    tokenizer, vocab: BrainVocab, prompt: str, tokens=None, source: str = "sample"
) -> list[int]:
    """The chat-formatted prompt, ending with the assistant header (what generation continues)."""
    before, after = chat_frame(tokenizer)
    return [*before, *_with_scans(tokenizer, vocab, prompt, _scan_rows(tokens, source), source), *after]


def encode_instruction(tokenizer, vocab: BrainVocab, sample: dict, source: str = "sample") -> dict:
    """A corpus sample {"prompt", "answer", "tokens"?} → chat sequence with loss on the answer only.

    The scans of ``tokens`` fill the prompt's placeholders first, then the answer's (an answer may
    itself be a scan, e.g. for temporal prediction).
    """
    for key in ("prompt", "answer"):
        if not isinstance(sample.get(key), str):
            raise InputError(source, key, "missing or not a string")
    scans = _scan_rows(sample.get("tokens"), source)
    n_prompt_scans = sample["prompt"].count(SCAN_START)
    n_placeholders = n_prompt_scans + sample["answer"].count(SCAN_START)
    if n_placeholders != len(scans):
        raise InputError(
            source,
            "tokens",
            f"prompt and answer have {n_placeholders} {SCAN_START} placeholders for {len(scans)} scans",
        )
    prompt = encode_prompt(
        tokenizer,
        vocab,
        sample["prompt"],
        np.asarray(scans[:n_prompt_scans]) if n_prompt_scans else None,
        source,
    )
    answer = _with_scans(tokenizer, vocab, sample["answer"], scans[n_prompt_scans:], source)
    answer.append(tokenizer.eos_token_id)
    encoded = {
        "input_ids": prompt + answer,
        "labels": [IGNORE] * len(prompt) + _label_new_only(answer, vocab),
        "objective": OBJECTIVES.index("instruction"),
    }
    check_answer_mask(encoded["input_ids"], encoded["labels"], len(prompt), answer, vocab, source)
    return encoded


def check_answer_mask(
    input_ids, labels, prompt_length: int, answer_ids, vocab: BrainVocab, source: str = "sample"
) -> None:
    """Raise InputError unless exactly the answer's tokens (minus delimiters) carry the loss.

    Checks that inputs and labels have one length, that the answer occupies the tail of the inputs
    after `prompt_length`, that no prompt position is supervised and that every supervised label is
    the input token at that position.
    """
    input_ids, labels, answer_ids = list(input_ids), list(labels), list(answer_ids)
    problems = []
    if len(labels) != len(input_ids):
        problems.append(f"{len(labels)} labels for {len(input_ids)} inputs")
    else:
        if input_ids[prompt_length:] != answer_ids:
            problems.append(
                f"inputs after the prompt ({len(input_ids) - prompt_length} tokens) are not the "
                f"answer ({len(answer_ids)} tokens)"
            )
        leaked = [i for i in range(min(prompt_length, len(labels))) if labels[i] != IGNORE]
        if leaked:
            problems.append(f"{len(leaked)} prompt positions carry a loss, first at {leaked[0]}")
        wrong = [i for i in range(len(labels)) if labels[i] != IGNORE and labels[i] != input_ids[i]]
        if wrong:
            problems.append(
                f"{len(wrong)} labels differ from the token at their position, first at {wrong[0]}"
            )
        expected = [i for i in answer_ids if i < vocab.scan_start]
        got = [label for label in labels[prompt_length:] if label != IGNORE]
        if got != expected:
            problems.append(f"{len(got)} supervised answer tokens, expected {len(expected)}")
    if problems:
        raise InputError(source, "labels", "prompt/answer masking misaligned: " + "; ".join(problems))


def encode_joint(
    tokenizer, vocab: BrainVocab, objective: str, text: str | None = None, tokens=None, source: str = "sample"
) -> dict:
    """A stage-2 joint-modeling sequence.

    Parameters
    ----------
    objective : {"text", "brain", "brain_to_text", "text_to_brain"}
        text: next-token on `text`. brain: temporal prediction, the scans after the first of `tokens`
        [n_scans ≥ 2, P·L] are predicted from the ones before. brain_to_text: `text` (a caption or a
        description) predicted after the scans. text_to_brain: the scans predicted after `text`.
    """
    needs = {
        "text": (True, False),
        "brain": (False, True),
        "brain_to_text": (True, True),
        "text_to_brain": (True, True),
    }
    if objective not in needs:
        raise InputError(source, "objective", f"{objective!r} is not one of {sorted(needs)}")
    need_text, need_tokens = needs[objective]
    if need_text and not (isinstance(text, str) and text.strip()):
        raise InputError(source, "text", f"objective {objective!r} needs a non-empty text")
    if need_tokens and tokens is None:
        raise InputError(source, "tokens", f"objective {objective!r} needs brain tokens [n_scans, P·L]")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if objective == "text":
        body = text_ids(tokenizer, text) + [eos]
        ids, labels = [bos, *body], [IGNORE, *body]
    elif objective == "brain":
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[0] < 2:
            raise InputError(
                source, "tokens", f"temporal prediction needs ≥ 2 scans, got shape {tokens.shape}"
            )
        first = vocab.run_ids(tokens[:1], source)
        rest = vocab.run_ids(tokens, source)[len(first) :]
        ids, labels = first + rest, [IGNORE] * len(first) + _label_new_only(rest, vocab)
    elif objective == "brain_to_text":
        run = vocab.run_ids(tokens, source)
        body = text_ids(tokenizer, text) + [eos]
        ids, labels = run + body, [IGNORE] * len(run) + body
    else:
        prefix = [bos, *text_ids(tokenizer, text)]
        run = vocab.run_ids(tokens, source)
        ids, labels = prefix + run, [IGNORE] * len(prefix) + _label_new_only(run, vocab)
    return {"input_ids": ids, "labels": labels, "objective": OBJECTIVES.index(objective)}


def collate(samples: list[dict], pad_id: int, max_length: int | None = None,
            latents: ScanLatents | None = None) -> dict[str, torch.Tensor]:
    """Right-pad encoded samples into a batch for ``BrainLM.forward(**batch)``.

    Sequences longer than `max_length` are an error rather than truncated: cutting would silently
    drop answers or half a scan. Continuous brain input (:mod:`fmrilm.llm.brain_input`): with
    `latents`, each sample's ``scans`` references are looked up there; without, samples may carry
    their ``brain_latents`` rows ``[n_brain, d_code]`` themselves.
    """
    if not samples:
        raise InputError("batch", "samples", "empty batch")
    longest = max(len(s["input_ids"]) for s in samples)
    if max_length is not None and longest > max_length:
        raise InputError(
            "batch", "length", f"a sample of {longest} tokens exceeds the context of {max_length}"
        )
    ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample["input_ids"])
        ids[row, :n] = torch.tensor(sample["input_ids"])
        labels[row, :n] = torch.tensor(sample["labels"])
        mask[row, :n] = 1
    objective = torch.tensor([s["objective"] for s in samples], dtype=torch.long)
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask, "objective": objective}
    if latents is not None:
        batch.update(latents.batch(samples))
    elif any(s.get("brain_latents") is not None for s in samples):
        rows = [s.get("brain_latents") for s in samples]
        batch.update(pad_latents(rows, next(r for r in rows if r is not None).shape[-1]))
    return batch
