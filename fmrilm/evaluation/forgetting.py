"""Knowledge kept: the adapted model against its own pretrained base on text that has nothing to do with brains.

Brain tokens are meant to *steer* a pretrained LM, not overwrite it; LoRA is chosen partly because it
forgets less than full fine-tuning (Biderman et al. 2024, "LoRA learns less and forgets less"). Two
checks, both on held-out general text shipped with the package (``data/general_text.json``, written
for fmrilm: no sentence is in any corpus):

- perplexity of the general sentences under the adapted model and under the pretrained base checkpoint
  itself (loaded afresh: phase 1's norms and phase 2's adapters both count as adaptation), and their
  ratio — the target is within 10 %;
- greedy answers to a handful of fixed text-only questions (capital of France, ...), base beside
  adapted, with the share that contains the expected word.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from fmrilm.llm.formatting import chat_frame, text_ids
from fmrilm.llm.generate import generate

GENERAL_TEXT = "general_text.json"


def general_text() -> dict:
    """The shipped held-out texts and fixed prompts."""
    return json.loads(resources.files("fmrilm.evaluation").joinpath("data", GENERAL_TEXT).read_text())


@torch.no_grad()
def text_nll(logits_of, tokenizer, texts: list[str]) -> tuple[float, int]:
    """Summed next-token negative log-likelihood of `texts` (each scored alone) and the token count;
    `logits_of(ids [1, T])` gives text logits [1, T, n_text]."""
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([start + tokenizer(text, add_special_tokens=False)["input_ids"]])
        logits = logits_of(ids)[0, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return total, count


def _hits(answers: list[str], prompts: list[dict]) -> float:
    return float(np.mean([any(e in a.lower() for e in p["expect"]) for a, p in zip(answers, prompts, strict=True)]))


@torch.no_grad()
def _base_answers(lm, tokenizer, prompts: list[dict], max_new_tokens: int) -> list[str]:
    """Greedy answers of the plain base model, framed exactly as the adapted model's prompts are."""
    before, after = chat_frame(tokenizer)
    answers = []
    for p in prompts:
        ids = torch.tensor([[*before, *text_ids(tokenizer, p["question"]), *after]])
        out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                          do_sample=False, pad_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:]
        answers.append(tokenizer.decode(out, skip_special_tokens=True).strip())
    return answers


def _base_figures(lm, tokenizer, data: dict, max_new_tokens: int) -> dict:
    nll, count = text_nll(lambda ids: lm(ids).logits, tokenizer, data["texts"])
    answers = _base_answers(lm, tokenizer, data["prompts"], max_new_tokens)
    return {"perplexity": math.exp(nll / count), "tokens": count, "answers": answers,
            "hits": _hits(answers, data["prompts"])}


def forgetting_section(model, max_new_tokens: int = 16) -> dict:
    """Perplexity and fixed-prompt answers, pretrained base vs adapted (see the module docstring).

    Returns ``{"skipped": reason}`` when the base checkpoint is not on disk (a merged model's base).
    """
    from fmrilm.llm.backbone import load_causal_lm, load_tokenizer

    base_dir = Path(model.base_identity.get("path", ""))
    if not (base_dir / "config.json").is_file():
        return {"skipped": f"the base checkpoint {base_dir} is not on disk"}
    data = general_text()
    out = {"base": _base_figures(load_causal_lm(base_dir).eval(), load_tokenizer(base_dir), data, max_new_tokens)}
    was_training = model.training
    model.eval()
    try:
        nll, count = text_nll(lambda ids: model.text_logits(model.hidden_states(ids)[0]), model.tokenizer,
                              data["texts"])
        answers = generate(model, [None] * len(data["prompts"]), [p["question"] for p in data["prompts"]],
                           max_new_tokens=max_new_tokens)
    finally:
        model.train(was_training)
    out["adapted"] = {"perplexity": math.exp(nll / count), "tokens": count, "answers": answers,
                      "hits": _hits(answers, data["prompts"])}
    ratio = out["adapted"]["perplexity"] / out["base"]["perplexity"]
    return {**out, "perplexity_ratio": ratio, "within_10_percent": bool(ratio <= 1.10),
            "questions": [p["question"] for p in data["prompts"]], "n_texts": len(data["texts"])}
