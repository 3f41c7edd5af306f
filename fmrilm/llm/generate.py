"""Generation from a BrainLM: captions and answers, closed answers, next scans.

- :func:`generate` continues chat prompts (with ``<scan>`` placeholders filled by brain tokens) into
  text, batched with left padding and a KV cache, greedy or sampled (temperature, top-k, top-p).
- :func:`choose_answer` is constrained decoding for closed questions (yes/no, counts, classes): each
  allowed answer is scored by its log-likelihood under the training template, the best one wins, so
  the output is always one of the allowed answers.
- :func:`generate_scan` predicts the next scan of a run token by token with the brain head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from fmrilm.errors import InputError
from fmrilm.llm.brain_input import latent_rows, pad_latents
from fmrilm.llm.formatting import encode_instruction, encode_prompt
from fmrilm.llm.model import IGNORE, BrainLM


@dataclass
class Sampling:
    """Decoding settings: greedy when `do_sample` is False."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


def _pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """Next token per row from logits [B, V]."""
    if not sampling.do_sample:
        return logits.argmax(-1)
    if sampling.temperature <= 0:
        raise InputError("sampling", "temperature", f"must be > 0 when sampling, got {sampling.temperature}")
    logits = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = logits.topk(min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p (the first token always stays).
        drop = (cumulative - sorted_logits.softmax(-1)) >= sampling.top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def _decode(
    model: BrainLM, prompts: list[list[int]], steps: int, head, sampling: Sampling, stop_id: int | None,
    allowed: torch.Tensor | None = None, latents: dict | None = None, min_tokens: int = 1,
):
    """Left-padded, KV-cached autoregressive decoding; `head` maps hidden [B, d] → (logits, id offset).

    `allowed` (bool over the head's logits) restricts every step's choice; the stop token is allowed
    from step `min_tokens` on, so at least that many allowed tokens are written. `latents` (the batch fields of
    :func:`~fmrilm.llm.brain_input.pad_latents`) are read by the prompts' brain tokens.
    """
    pad = model.tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    model.check_ids(ids, "prompt")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generator = torch.Generator().manual_seed(sampling.seed)
    hidden, state = model.hidden_states(ids, mask, positions, use_cache=True, **(latents or {}))
    out = torch.empty((len(prompts), 0), dtype=torch.long)
    done = torch.zeros(len(prompts), dtype=torch.bool)
    then_stop = allowed
    if allowed is not None and stop_id is not None:
        then_stop = allowed.clone()
        then_stop[stop_id] = True  # the heads with a stop token (text) have offset 0
    for step in range(steps):
        logits, offset = head(hidden[:, -1])
        if allowed is not None:
            logits = logits.masked_fill(~(allowed if step < min_tokens else then_stop), float("-inf"))
        token = _pick(logits, sampling, generator) + offset
        if stop_id is not None:
            token = token.masked_fill(done, stop_id)
            done |= token == stop_id
        out = torch.cat([out, token[:, None]], dim=1)
        if done.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        hidden, state = model.hidden_states(token[:, None], mask, positions, state, use_cache=True)
    return out


def prompt_lists(brain_tokens, prompts) -> tuple[list, list[str]]:
    """(token arrays, prompts) as lists of equal length, from one prompt or lists."""
    if isinstance(prompts, str):
        prompts, brain_tokens = [prompts], [brain_tokens]
    _check_parallel(brain_tokens, prompts, "brain_tokens")
    return list(brain_tokens), list(prompts)


def _check_parallel(values, prompts, field: str) -> None:
    if len(values) != len(prompts):
        raise InputError("generate", field, f"{len(values)} arrays for {len(prompts)} prompts")


def _latent_list(brain_latents, prompts) -> list:
    """One latent array (or None: the prompt reads codes) per prompt (:mod:`fmrilm.llm.brain_input`)."""
    if brain_latents is None:
        return [None] * len(prompts)
    if isinstance(brain_latents, np.ndarray) and brain_latents.ndim == 3:
        brain_latents = [brain_latents]
    _check_parallel(brain_latents, prompts, "brain_latents")
    return [None if x is None else latent_rows(x, f"prompt {i}") for i, x in enumerate(brain_latents)]


def _latent_batch(model: BrainLM, rows: list) -> dict | None:
    if all(r is None for r in rows):
        return None
    return pad_latents(rows, model.brain_embed.proj.in_features)


def _room(model: BrainLM, prompt_length: int, wanted: int, source: str) -> int:
    """New tokens that fit after a prompt; InputError if the prompt alone fills the context."""
    if model.max_length is None:
        return wanted
    if prompt_length >= model.max_length:
        raise InputError(
            source,
            "prompt",
            f"{prompt_length} tokens, the context holds {model.max_length}: "
            "shorten the prompt or use fewer scans",
        )
    return min(wanted, model.max_length - prompt_length)


DIGITS = set("0123456789")
DIGIT_BYTES = {f"<0x{0x30 + d:02X}>" for d in range(10)}  # SentencePiece byte-fallback pieces of 0–9


def number_tokens(tokenizer) -> list[int]:
    """Ids of the tokenizer's single-digit pieces (``7``, ``▁7``, ``Ġ7`` or the byte-fallback piece of
    a digit): the vocabulary of a whole-number answer for :func:`generate`'s ``allowed_tokens``, where
    ``max_new_tokens`` then bounds the number of digits on any tokenizer."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return [i for i, p in enumerate(pieces) if p in DIGIT_BYTES or (p and p.lstrip("▁Ġ") in DIGITS)]


@torch.no_grad()
def generate(
    model: BrainLM,
    brain_tokens,
    prompts,
    max_new_tokens: int = 48,
    sampling: Sampling | None = None,
    batch_size: int = 16,
    progress: bool = False,
    allowed_tokens: list[int] | None = None,
    brain_latents=None,
    min_new_tokens: int = 1,
) -> list[str]:
    """Answers / captions for prompts that may refer to brain scans.

    Parameters
    ----------
    brain_tokens : array [n_scans, P·L] or None, or a list of them (one per prompt)
        Codebook ids filling each prompt's ``<scan>`` placeholders in order.
    prompts : str or list of str
    sampling : Sampling, optional
        Greedy by default.
    allowed_tokens : list of int, optional
        Text token ids the answer may use (end-of-sequence too, after `min_new_tokens` of them), e.g.
        :func:`number_tokens` for a numeric answer.
    brain_latents : array [n_scans, P, d_code] or None, or a list of them (one per prompt), optional
        The tokenizer encoder's outputs of the same scans, for a model with ``brain_input:
        continuous`` (:meth:`~fmrilm.tokenizer.model.BrainTokenizer.encode_with_latents`).

    Returns
    -------
    list of str
        The generated text of each prompt, up to (not including) the end-of-sequence token.
    """
    latents = _latent_list(brain_latents, [prompts] if isinstance(prompts, str) else prompts)
    brain_tokens, prompts = prompt_lists(brain_tokens, prompts)
    sampling = sampling or Sampling()
    # Every prompt is encoded and checked before any generation starts.
    encoded = [
        encode_prompt(model.tokenizer, model.vocab, p, t, f"prompt {i}")
        for i, (p, t) in enumerate(zip(prompts, brain_tokens, strict=True))
    ]
    room = [_room(model, len(e), max_new_tokens, f"prompt {i}") for i, e in enumerate(encoded)]
    allowed = None
    if allowed_tokens is not None:
        n_text = model.vocab.n_text
        if not allowed_tokens or min(allowed_tokens) < 0 or max(allowed_tokens) >= n_text:
            raise InputError("generate", "allowed_tokens", f"need text token ids in [0, {n_text})")
        allowed = torch.zeros(n_text, dtype=torch.bool)
        allowed[list(allowed_tokens)] = True
    was_training = model.training
    model.eval()
    texts: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc="generate"):
            batch, steps = encoded[start : start + batch_size], min(room[start : start + batch_size])
            eos = model.tokenizer.eos_token_id
            out = _decode(model, batch, steps, lambda h: (model.text_logits(h), 0), sampling, eos, allowed,
                          _latent_batch(model, latents[start : start + batch_size]), min_new_tokens)
            for row in out.tolist():
                row = row[: row.index(eos)] if eos in row else row
                texts.append(model.tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return texts


def _shared_prompt(group: list[dict]) -> int:
    """Length of the start that every candidate's sequence of one prompt shares and that scores no
    token: it is run once, and each candidate continues from its cache."""
    first = group[0]["input_ids"]
    limit = min(next(i for i, label in enumerate(s["labels"]) if label != IGNORE) for s in group)
    n = 0
    while n < limit and all(s["input_ids"][n] == first[n] for s in group):
        n += 1
    return n


def _candidate_scores(model: BrainLM, groups: list[list[dict]], latents: dict | None) -> torch.Tensor:
    """Summed log-probability of every candidate of `groups` (one group per prompt), in order: each
    prompt runs once (left-padded, cached) and its candidates' tails continue it side by side."""
    pad = model.tokenizer.eos_token_id
    cut = [_shared_prompt(g) for g in groups]
    prefixes = [g[0]["input_ids"][:n] for g, n in zip(groups, cut, strict=True)]
    width = max(len(p) for p in prefixes)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prefixes])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prefixes])
    model.check_ids(ids, "prompt")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden, state = model.hidden_states(ids, mask, positions, use_cache=True, **(latents or {}))
    rows = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    tails = [(s["input_ids"][n:], s["labels"][n:]) for g, n in zip(groups, cut, strict=True) for s in g]
    length = max(len(t) for t, _ in tails)
    tail_ids = torch.full((len(tails), length), pad, dtype=torch.long)
    tail_labels = torch.full((len(tails), length), IGNORE, dtype=torch.long)
    tail_mask = torch.zeros((len(tails), length), dtype=torch.long)
    for r, (t, label) in enumerate(tails):
        tail_ids[r, : len(t)], tail_labels[r, : len(t)], tail_mask[r, : len(t)] = (
            torch.tensor(t), torch.tensor(label), 1)
    hidden_tail, _ = model.hidden_states(tail_ids, torch.cat([mask[rows], tail_mask], 1),
                                         positions[rows, -1:] + 1 + torch.arange(length), state.select(rows),
                                         use_cache=True)
    # the prompt's last position predicts each tail's first token; the IGNORE column is its own label
    h = torch.cat([hidden[rows, -1:].to(hidden_tail.dtype), hidden_tail], 1)
    losses, _, _ = model.token_losses(h, torch.cat([torch.full((len(tails), 1), IGNORE), tail_labels], 1))
    return -losses.sum(dim=1)


@torch.no_grad()
def choose_answer(model: BrainLM, brain_tokens, prompts, candidates, batch_size: int = 32, brain_latents=None):
    """Constrained decoding: the most likely answer among `candidates` for each prompt.

    Each prompt (with its brain tokens) is run once; its candidates are scored from its KV cache, so a
    long run of brain tokens costs one pass however many answers it is asked to choose between.

    Parameters
    ----------
    candidates : list of str, or list of lists of str (one candidate set per prompt)
    batch_size : int
        Candidate sequences per batch (a prompt's candidates always share one).
    brain_latents : optional
        As for :func:`generate`.

    Returns
    -------
    answers : list of str
    log_likelihoods : list of np.ndarray
        Summed log-probability of each candidate (answer tokens and end-of-sequence).
    """
    latents = _latent_list(brain_latents, [prompts] if isinstance(prompts, str) else prompts)
    brain_tokens, prompts = prompt_lists(brain_tokens, prompts)
    if candidates and isinstance(candidates[0], str):
        candidates = [list(candidates)] * len(prompts)
    if len(candidates) != len(prompts) or any(len(c) == 0 for c in candidates):
        raise InputError("choose_answer", "candidates", "need a non-empty candidate list for every prompt")
    groups = [
        [encode_instruction(model.tokenizer, model.vocab, {"prompt": p, "answer": c, "tokens": t}, f"prompt {i}")
         for c in cands]
        for i, (p, t, cands) in enumerate(zip(prompts, brain_tokens, candidates, strict=True))
    ]
    for i, group in enumerate(groups):
        longest = max(len(s["input_ids"]) for s in group)
        if model.max_length is not None and longest > model.max_length:
            raise InputError(f"prompt {i}", "length",
                             f"{longest} tokens with an answer, the context holds {model.max_length}")
    was_training = model.training
    model.eval()
    scores, start = [], 0
    try:
        while start < len(groups):
            stop, rows = start + 1, len(groups[start])
            while stop < len(groups) and rows + len(groups[stop]) <= batch_size:
                rows, stop = rows + len(groups[stop]), stop + 1
            scores.append(_candidate_scores(model, groups[start:stop], _latent_batch(model, latents[start:stop])))
            start = stop
    finally:
        model.train(was_training)
    flat = torch.cat(scores).float().numpy()
    bounds = np.cumsum([0] + [len(c) for c in candidates])
    log_likelihoods = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    answers = [cands[int(np.argmax(ll))] for cands, ll in zip(candidates, log_likelihoods, strict=True)]
    return answers, log_likelihoods


def _outside_codes(codes: tuple[int, int] | None, n_codes: int) -> torch.Tensor | None:
    """Mask of the brain codes outside ``[low, high)`` (None for None), built once per generation."""
    if codes is None:
        return None
    low, high = codes
    if not 0 <= low < high <= n_codes:
        raise InputError("generate_scan", "codes", f"{codes}: not a range inside the {n_codes} brain codes")
    outside = torch.ones(n_codes, dtype=torch.bool)
    outside[low:high] = False
    return outside


@torch.no_grad()
def generate_scan(model: BrainLM, runs, tokens_per_scan: int, sampling: Sampling | None = None,
                  codes: tuple[int, int] | None = None, probabilities: bool = False):
    """Predict the next scan of each run [n_scans, P·L] with the brain head → codebook ids [B, P·L];
    `codes` ``(low, high)`` keeps the prediction among those ids (a rest patch among the rest codes of a
    vocabulary that holds task codes too). With `probabilities`, also the head's distribution at each
    token of the prediction, ``[B, P·L, high - low]`` (over `codes`, or the whole codebook), each step
    conditioned on the tokens chosen before it."""
    runs = [np.asarray(r) for r in runs]
    prompts = [
        model.vocab.run_ids(r, f"run {i}") + [model.vocab.time_sep, model.vocab.scan_start]
        for i, r in enumerate(runs)
    ]
    for i, p in enumerate(prompts):
        if _room(model, len(p), tokens_per_scan, f"run {i}") < tokens_per_scan:
            raise InputError(
                f"run {i}",
                "length",
                f"{len(p)} tokens + {tokens_per_scan} exceed the context of {model.max_length}",
            )
    outside = _outside_codes(codes, model.vocab.codebook_size)
    kept = slice(*codes) if codes is not None else slice(None)
    steps = []

    def head(h):
        logits = model.brain_logits(h)
        if outside is not None:
            logits = logits.masked_fill(outside.to(h.device), float("-inf"))
        if probabilities:
            steps.append(logits[:, kept].softmax(-1))
        return logits, model.vocab.brain_offset

    was_training = model.training
    model.eval()
    try:
        out = _decode(model, prompts, tokens_per_scan, head, sampling or Sampling(), None)
    finally:
        model.train(was_training)
    predicted = model.vocab.ids_to_codes(out.numpy())
    return (predicted, torch.stack(steps, 1).cpu().numpy()) if probabilities else predicted
