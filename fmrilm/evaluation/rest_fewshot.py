"""Few-shot phenotypes on held-out rest subjects (fMRI-LM's few-shot protocol).

    fmrilm rest-fewshot --run runs/demo --config rest_fewshot_demo      # a pipeline run's artifacts
    fmrilm rest-fewshot --config rest_fewshot_demo --set ks=[2,4] --force

The splits hold some rest subjects out of everything fitted (``rest_fewshot_subjects``: the corpus's
``fewshot`` split). For each phenotype and each k in ``ks``, k labelled runs of those subjects, balanced
over the classes (k / n_classes each) or, for a number (age), spread over its range (one from each of k
equal-count age bins), one seeded draw per k and draw index, are all a condition learns from:

- ``lora``: the instruction-tuned model's LoRA adapters trained on, in full-batch steps, the k
  examples' phenotype samples (the training template, answer-only loss), then restored;
- ``in_context``: the k examples (scan tokens and answer) before the question in the corpus's shot
  format, each with as many evenly spaced windows as let every prompt fit the context
  (``example_scans``: 0), or a fixed number; a k that does not fit with one window is reported so;
- ``fc_logistic`` (``fc_ridge`` for a number): the FC baseline fitted on the same k runs; for a number
  also ``examples_mean``, the k examples' mean age for everyone.

Every condition answers the same query subjects (``n_queries`` of the scored split's test subjects,
seeded), classes by constrained decoding and numbers as digits
(:func:`~fmrilm.evaluation.rest_eval.number_answers`), beside the zero-shot model on them and the
training subjects' majority class or mean. Intervals: 95 % bootstrap over the queries.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fmrilm.config import required_path
from fmrilm.corpus import SCAN
from fmrilm.corpus.phrasing import scan_placeholders, with_shots
from fmrilm.corpus.samples import PHENOTYPES, SEX_WORDS
from fmrilm.errors import InputError
from fmrilm.evaluation.baselines import chance_baseline, fc_features, phenotype_baseline
from fmrilm.evaluation.regression import classification_scores, regression_scores
from fmrilm.evaluation.rest_eval import number_answers, positive_probability
from fmrilm.llm.formatting import collate, encode_instruction, encode_prompt
from fmrilm.llm.generate import choose_answer
from fmrilm.seeds import stream

PLACEHOLDER_RUN = re.compile(rf"{re.escape(SCAN)}(?: {re.escape(SCAN)})*")
ANSWER_ROOM = 8  # tokens kept free after an in-context prompt for the answer and end-of-sequence
PHENOTYPE_IDS = {name: i for i, name in enumerate(PHENOTYPES)}  # a phenotype's id in its seed streams


@dataclass
class FewShotLoRA:
    """LoRA fine-tuning on the k examples.

    Attributes
    ----------
    steps : int
        Full-batch optimiser steps over the k examples; 0: no LoRA condition.
    lr : float
    micro_batch : int
        Examples per forward pass (gradients accumulate over the k).
    precision : {"fp32", "bf16"}
        bf16: autocast, as the LM stages train on CPU.
    """

    steps: int = 0
    lr: float = 1e-4
    micro_batch: int = 1
    precision: str = "fp32"


@dataclass
class RestFewShotConfig:
    """The few-shot phenotype evaluation (YAML: ``fmrilm/configs/rest_fewshot_*.yaml``).

    Attributes
    ----------
    corpus, tokenizer, model, splits, out, backbone : str
        As for :class:`~fmrilm.evaluation.runner.EvalConfig`.
    ks : tuple of int
        Labelled examples per condition, each a multiple of the phenotype's class count (any k for age).
    phenotypes : tuple of str
        Phenotypes asked: classes (their corpus samples' ``choices``) or age (a number).
    n_draws : int
        Example sets per k (each condition's accuracy is averaged over them; the intervals are of draw 0).
    n_queries : int
        Test subjects answered per phenotype (seeded); 0: all.
    example_scans : int
        Windows per in-context example (evenly spaced); 0: the most that fit the context.
    lora : FewShotLoRA
    batch_size : int
        Candidate sequences per constrained-decoding batch.
    """

    corpus: str = required_path()
    tokenizer: str = required_path()
    model: str = required_path()
    splits: str = ""
    out: str = required_path()
    backbone: str = ""
    ks: tuple[int, ...] = (2, 4, 10)
    phenotypes: tuple[str, ...] = ("sex", "diagnosis")
    n_draws: int = 1
    n_queries: int = 0
    example_scans: int = 0
    lora: FewShotLoRA = field(default_factory=FewShotLoRA)
    batch_size: int = 16
    seed: int = 0

    def validate(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise InputError("rest_fewshot config", "ks", f"{list(self.ks)}: need example counts >= 1")
        for name, value in (("n_draws", self.n_draws), ("lora.steps", self.lora.steps),
                            ("lora.micro_batch", self.lora.micro_batch - 1), ("example_scans", self.example_scans),
                            ("n_queries", self.n_queries)):
            if value < 0:
                raise InputError("rest_fewshot config", name, f"must be >= {1 if name == 'lora.micro_batch' else 0}")
        if self.lora.precision not in ("fp32", "bf16"):
            raise InputError("rest_fewshot config", "lora.precision", f"{self.lora.precision!r}; expected fp32 or bf16")


def with_windows(sample: dict, n: int) -> tuple[str, np.ndarray]:
    """A phenotype sample's prompt and tokens with `n` of its windows, evenly spaced (0: all of them)."""
    tokens = np.asarray(sample["tokens.npy"], np.int64)
    prompt = sample["json"]["prompt"]
    if n == 0 or n >= len(tokens):
        return prompt, tokens
    keep = np.linspace(0, len(tokens) - 1, n).round().astype(int)
    return PLACEHOLDER_RUN.sub(scan_placeholders(n), prompt, count=1), tokens[keep]


def _numeric(queries: list[dict]) -> bool:
    """Whether the samples' answers are numbers (age), not classes."""
    return queries[0]["json"].get("answer_type") == "count"


def _truth(samples: list[dict]) -> list:
    value = float if _numeric(samples) else str
    return [value(s["json"]["answer"]) for s in samples]


def _scored(model, prompts: list[tuple[str, np.ndarray]], queries: list[dict], known: list, name: str, cfg) -> dict:
    """The model's answers to `prompts` (one per query) scored against the queries' truth; `known`: the
    labels or ages the condition learnt from (a number's digit count and fallback)."""
    tokens, texts = [t for _, t in prompts], [p for p, _ in prompts]
    if _numeric(queries):
        answers, values, unparsed = number_answers(model, tokens, texts, known, cfg.batch_size)
        return {**regression_scores(_truth(queries), values, cfg.seed), "unparsed_answers": unparsed,
                "answers": dict(Counter(answers).most_common(8))}
    choices = [sorted(q["json"]["choices"]) for q in queries]
    answers, ll = choose_answer(model, tokens, texts, choices, batch_size=cfg.batch_size)
    score = [positive_probability(c, x, name) for c, x in zip(choices, ll, strict=True)]
    return classification_scores(_truth(queries), answers, score, cfg.seed)


def _balanced(pool: list[dict], k: int, classes: list[str], rng) -> list[dict] | str:
    """k examples of `pool`, k / len(classes) of each class in a seeded order, or why there are none."""
    if k % len(classes):
        return f"k = {k} is not a multiple of the {len(classes)} classes"
    chosen = []
    for c in classes:
        have = [s for s in pool if s["json"]["answer"] == c]
        if len(have) < k // len(classes):
            return f"the few-shot pool has {len(have)} runs of class {c!r}; k = {k} needs {k // len(classes)}"
        chosen += [have[i] for i in rng.choice(len(have), k // len(classes), replace=False)]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def _spread(pool: list[dict], k: int, rng) -> list[dict] | str:
    """k examples of `pool` spread over its numeric answers (ages): one seeded pick from each of k
    equal-count bins of the sorted pool, in a seeded order (balance's analogue for a number), or why not."""
    if len(pool) < k:
        return f"the few-shot pool has {len(pool)} runs; k = {k} needs {k}"
    by_value = sorted(pool, key=lambda s: (float(s["json"]["answer"]), s["json"]["subject"]))
    chosen = [by_value[int(rng.choice(b))] for b in np.array_split(np.arange(len(by_value)), k)]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def _in_context(model, examples: list[dict], queries: list[dict], cfg) -> tuple[list, dict]:
    """In-context prompts (examples with as many windows as fit, or ``example_scans``) and what was used."""
    longest = max(len(s["tokens.npy"]) for s in examples)
    counts = [cfg.example_scans] if cfg.example_scans else range(longest, 0, -1)
    for n in counts:
        shots = [with_windows(s, n) for s in examples]
        prompts = [(with_shots(q["json"]["prompt"], [(p, s["json"]["answer"]) for (p, _), s in zip(shots, examples)]),
                    np.concatenate([t for _, t in shots] + [np.asarray(q["tokens.npy"], np.int64)]))
                   for q in queries]
        length = max(len(encode_prompt(model.tokenizer, model.vocab, p, t, "in-context prompt")) for p, t in prompts)
        if model.max_length is None or length + ANSWER_ROOM <= model.max_length:
            return prompts, {"example_windows": int(n), "prompt_tokens": int(length)}
    return [], {"status": "skipped", "reason": f"{len(examples)} examples of {counts[-1]} window(s) and the query "
                                               f"need {length} tokens; the context holds {model.max_length}"}


@contextlib.contextmanager
def lora_adapted(model, examples: list[dict], settings: FewShotLoRA, seed: int):
    """`model` with its LoRA weights trained on `examples` (yields the loss of each step); every weight
    and ``requires_grad`` flag is restored on exit."""
    named = dict(model.named_parameters())
    lora = {n: p for n, p in named.items() if "lora_" in n}
    if not lora:
        raise InputError("model", "lora", "no LoRA adapters to fine-tune (a merged checkpoint)")
    saved = {n: p.detach().clone() for n, p in lora.items()}
    flags = {n: p.requires_grad for n, p in named.items()}
    encoded = [encode_instruction(model.tokenizer, model.vocab, {"prompt": s["json"]["prompt"], "answer":
                                  s["json"]["answer"], "tokens": s["tokens.npy"]}, s["__key__"]) for s in examples]
    torch.manual_seed(seed)  # LoRA dropout
    device = next(iter(lora.values())).device.type
    was_training, losses = model.training, []
    try:
        for n, p in named.items():
            p.requires_grad_(n in lora)
        optimizer = torch.optim.AdamW(lora.values(), lr=settings.lr, weight_decay=0.0)
        model.train()
        for _ in range(settings.steps):
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for start in range(0, len(encoded), settings.micro_batch):
                chunk = encoded[start:start + settings.micro_batch]
                batch = collate(chunk, model.tokenizer.eos_token_id, model.max_length)
                with torch.autocast(device, dtype=torch.bfloat16, enabled=settings.precision == "bf16"):
                    loss = model(**batch)["loss"] * (len(chunk) / len(encoded))
                loss.backward()
                total += float(loss.detach())
            optimizer.step()
            losses.append(round(total, 4))
        yield losses
    finally:
        with torch.no_grad():
            for n, p in lora.items():
                p.copy_(saved[n])
        for n, p in named.items():
            p.requires_grad_(flags[n])
            p.grad = None
        model.train(was_training)


def _conditions(model, examples: list[dict], queries: list[dict], full: list, features, row_of: dict, name: str,
                cfg) -> dict:
    """FC baseline, in-context and LoRA scores of one set of examples on the queries (`full`: their prompts
    and tokens as asked zero-shot)."""
    truth, labels, numeric = _truth(queries), _truth(examples), _numeric(queries)
    fc = phenotype_baseline(features[[row_of[s["json"]["subject"]] for s in examples]], labels,
                            features[[row_of[q["json"]["subject"]] for q in queries]], truth,
                            "regression" if numeric else "classification", cfg.seed)
    fc.pop("predictions")
    out = {"examples": [s["json"]["subject"] for s in examples], "fc_ridge" if numeric else "fc_logistic": fc}
    if numeric:
        out["examples_mean"] = chance_baseline(labels, truth, "regression", cfg.seed)
    prompts, used = _in_context(model, examples, queries, cfg)
    out["in_context"] = {**_scored(model, prompts, queries, labels, name, cfg), **used} if prompts else used
    if cfg.lora.steps and not any("lora_" in n for n, _ in model.named_parameters()):
        out["lora"] = {"status": "skipped", "reason": "the model has no LoRA adapters (a merged checkpoint)"}
    elif cfg.lora.steps:
        with lora_adapted(model, examples, cfg.lora, cfg.seed) as losses:
            out["lora"] = {**_scored(model, full, queries, labels, name, cfg), "train_loss": losses}
    return out


def phenotype_fewshot(model, name: str, pool: list[dict], queries: list[dict], features: np.ndarray,
                      row_of: dict, train_labels: list, cfg) -> dict:
    """Zero-shot, base rate and every k's conditions for one phenotype (see the module docstring)."""
    numeric = _numeric(queries)
    full = [(q["json"]["prompt"], np.asarray(q["tokens.npy"], np.int64)) for q in queries]
    base = chance_baseline(train_labels, _truth(queries), "regression" if numeric else "classification", cfg.seed)
    out = {"n_queries": len(queries), "pool": len(pool),
           "zero_shot": _scored(model, full, queries, train_labels, name, cfg),
           "constant_mean" if numeric else "majority_class": base, "k": {}}
    metric, conditions = ("mae", ("fc_ridge", "examples_mean", "in_context", "lora")) if numeric else \
        ("accuracy", ("fc_logistic", "in_context", "lora"))
    classes = None if numeric else sorted(queries[0]["json"]["choices"])
    for k in cfg.ks:
        rngs = [stream(cfg.seed, "eval.rest_fewshot_examples", PHENOTYPE_IDS[name], k, d) for d in range(cfg.n_draws)]
        picked = [_spread(pool, k, rng) if numeric else _balanced(pool, k, classes, rng) for rng in rngs]
        reason = next((p for p in picked if isinstance(p, str)), None)
        if reason is not None:
            out["k"][str(k)] = {"status": "skipped", "reason": reason}
            continue
        draws = [_conditions(model, examples, queries, full, features, row_of, name, cfg) for examples in picked]
        scored = [c for c in conditions if all(metric in d.get(c, {}) for d in draws)]
        out["k"][str(k)] = {"draws": draws,
                            f"mean_{metric}": {c: float(np.mean([d[c][metric] for d in draws])) for c in scored}}
    return out


def _one_per_subject(samples: list[dict], name: str) -> list[dict]:
    """The first of each subject's `name` samples (brain tokens only, no shots), by subject id."""
    mine = sorted((s for s in samples if s["json"].get("phenotype") == name and not s["json"]["shots"]
                   and s["json"].get("paradigm", "brain") == "brain"), key=lambda s: s["json"]["subject"])
    first = {}
    for s in mine:
        first.setdefault(s["json"]["subject"], s)
    return list(first.values())


def query_subjects(samples: list[dict], n: int, seed: int, name: str) -> list[dict]:
    """`n` of the samples (one per subject: brain tokens only, no shots), in a seeded order; 0: all."""
    chosen = _one_per_subject(samples, name)
    order = stream(seed, "eval.rest_fewshot_queries", PHENOTYPE_IDS[name]).permutation(len(chosen))
    return [chosen[i] for i in order[: n or len(chosen)]]


def fewshot_pool(corpus: Path, name: str) -> list[dict]:
    """The corpus's ``fewshot``-split phenotype samples of `name` (one per subject, brain tokens only), by
    subject id: the examples are drawn from it by ``eval.rest_fewshot_examples`` under the config's seed."""
    from fmrilm.corpus.reader import read_split

    if not (Path(corpus) / "fewshot.manifest.json").is_file():
        raise InputError(corpus, "fewshot", "the corpus has no few-shot split (splits rest_fewshot_subjects = 0)")
    samples, _ = read_split(corpus, "fewshot", ("phenotype",), progress=False)
    return _one_per_subject(samples, name)


def run_rest_fewshot(cfg: RestFewShotConfig, overwrite: bool = False) -> dict:
    """Score every phenotype's few-shot conditions; write ``report.json``, ``report.md`` and the resolved
    config to ``cfg.out`` (atomically, once complete). Inputs are checked before the model loads."""
    import time

    from fmrilm.artifacts import check_compatible, resolve_model_dir, resolve_tokenizer_dir
    from fmrilm.brain.store import Dataset
    from fmrilm.config import check_required, save_config
    from fmrilm.corpus.heldout import load_heldout
    from fmrilm.evaluation.report import render_rest_fewshot
    from fmrilm.io import atomic_dir, atomic_path, write_json
    from fmrilm.llm.checkpoint import load_brainlm

    check_required(cfg, "rest_fewshot config")
    cfg.validate()
    if Path(cfg.out).exists() and not overwrite:
        raise InputError(cfg.out, "out", "already exists (pass --force to replace it)")
    t0 = time.time()
    heldout = load_heldout(cfg.corpus, cfg.splits or None, "test")
    model_dir = resolve_model_dir(cfg.model)
    check_compatible(resolve_tokenizer_dir(cfg.tokenizer), model_dir, cfg.corpus, splits=heldout.splits)
    path = heldout.input_path("rest_dataset")
    if path is None:
        raise InputError(Path(cfg.corpus) / "corpus.json", "inputs.rest_dataset", "the corpus has no rest data")
    rest = Dataset(path, kind="rest")
    rows = rest.table("subjects")
    row_of = {r["subject"]: i for i, r in enumerate(rows)}
    pools, queries = {}, {}
    for name in cfg.phenotypes:
        queries[name] = query_subjects(heldout.test_samples, cfg.n_queries, cfg.seed, name)
        if not queries[name] or queries[name][0]["json"].get("answer_type") not in ("class", "count"):
            raise InputError("rest_fewshot config", "phenotypes", f"{name!r}: no class- or number-answer phenotype "
                                                                 f"samples of it in the corpus's test split")
        pools[name] = fewshot_pool(cfg.corpus, name)
    features = fc_features(np.asarray(rest.array("timeseries")))
    model = load_brainlm(model_dir, cfg.backbone or None)
    trained = [r for r in rows if heldout.splits.rest_subjects.get(r["subject"]) == "train"]
    phenotypes = {}
    for name in cfg.phenotypes:
        value = float if _numeric(queries[name]) else str
        labels = [SEX_WORDS.get(r[name], r[name]) if name == "sex" else value(r[name])
                  for r in trained if r.get(name) is not None]
        phenotypes[name] = phenotype_fewshot(model, name, pools[name], queries[name], features, row_of, labels, cfg)
    report = {"protocol": {"note": "Examples: runs of the splits' few-shot subjects (never trained on), balanced "
                                   "over classes (numbers: spread over the range); queries: test subjects; the same "
                                   "queries for every condition.",
                           "splits": heldout.splits.record(), "max_length": model.max_length},
              "phenotypes": phenotypes, "timings_s": {"total": round(time.time() - t0, 2)}}
    with atomic_dir(cfg.out, overwrite) as tmp:
        write_json(tmp / "report.json", report)
        with atomic_path(tmp / "report.md") as md:
            md.write_text(render_rest_fewshot(report))
        save_config(cfg, tmp / "rest_fewshot_config.yaml")
    return report
