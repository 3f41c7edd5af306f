"""`fmrilm eval` (the evaluation report of a run), `fmrilm rest-fewshot` (few-shot phenotypes) and `fmrilm ask`
(a question about one scan).

    fmrilm eval --config eval_demo [--set n_items=300 ...] [--force]
    fmrilm eval --run runs/nsd --config eval_demo --force      # a pipeline run's artifacts, via its stages.json
    fmrilm rest-fewshot --run runs/demo --config rest_fewshot_demo --force  # k labelled held-out rest runs
    fmrilm ask --run runs/demo --scan sub-01/stim-000012 "What colour is the bus?"
    fmrilm ask --run runs/demo --scan 0/12 --backbone /models/Llama-3.1-8B "Describe the image."
    fmrilm ask --run runs/demo --rest sub-007 "Is this participant female or male?"

A scan id names a subject and a stimulus of the run's task dataset: ``SUBJECT/STIMULUS`` where
SUBJECT is a subject id (``sub-01``) or row, and STIMULUS a stimulus key (``stim-000012``) or row.
The scan is that subject's repeats of the stimulus, averaged (the NSD test convention). ``--rest SUBJECT``
(a subject id of the run's rest dataset, or its row) asks about that subject's rest run instead: the scans
are every window of its rest tokens (rest patches with a rest companion), as the corpus's phenotype samples
carry them, or the one window ``--window J``.
"""

from __future__ import annotations

import json

import numpy as np

from fmrilm.cli import positive_int
from fmrilm.config import add_run_args, config_from_args
from fmrilm.corpus.phrasing import scan_placeholders


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a run on its held-out test set (report.json + report.md)",
                       description="Captioning, VQA, retrieval, zero/few-shot, rest and controls on the "
                                   "corpus's test split; writes report.json, report.md and brain_map.png.")
    add_run_args(p, "eval_demo", "evaluation", _eval)

    f = sub.add_parser("rest-fewshot", help="few-shot phenotypes from k held-out rest runs (LoRA, in-context)",
                       description="k balanced labelled runs of the held-out few-shot subjects, learnt from by LoRA "
                                   "fine-tuning, in-context examples and an FC logistic, scored on test subjects "
                                   "beside the zero-shot model and the base rate; writes report.json and report.md.")
    add_run_args(f, "rest_fewshot_demo", "rest_fewshot", _rest_fewshot)

    a = sub.add_parser("ask", help="answer a question about one scan or rest run of a run",
                       description="Generate an answer from the run's instruction-tuned model for the "
                                   "averaged scan of one subject and stimulus, or for a subject's rest run.")
    a.add_argument("--run", required=True, help="pipeline run directory (its stages.json names the artifacts)")
    which = a.add_mutually_exclusive_group(required=True)
    which.add_argument("--scan", help="SUBJECT/STIMULUS of the task dataset, e.g. sub-01/stim-000012 or 0/12")
    which.add_argument("--rest", metavar="SUBJECT", help="a subject of the rest dataset (id or row)")
    a.add_argument("--window", type=int, default=None,
                   help="with --rest: only this window of the run (default: every window, as phenotype samples)")
    a.add_argument("question", help="the question (or an instruction such as 'Describe the image.')")
    a.add_argument("--max-new-tokens", type=positive_int, default=32,
                   help="longest answer in tokens, >= 1 (default: %(default)s)")
    a.add_argument("--json", action="store_true", help="print a JSON object")
    a.add_argument("--backbone", metavar="PATH", default=None,
                   help="base model directory of a LoRA model, when it is no longer where the run recorded it "
                        "(it must be the same checkpoint: its fingerprint is checked)")
    a.set_defaults(handler=_ask)


def _eval(args) -> int:
    from fmrilm.artifacts import run_paths
    from fmrilm.evaluation.runner import EvalConfig, run_evaluation

    cfg = config_from_args(EvalConfig, args, run_paths(args.run, "evaluation"))
    report = run_evaluation(cfg, overwrite=args.force)
    for name, t in report["targets"].items():
        print(f"{name:34s} {t['measured']:+.3f} (threshold {t['threshold']}) {'met' if t['met'] else 'MISSED'}")
    print(f"report: {cfg.out}/report.md")
    return 0


def _rest_fewshot(args) -> int:
    from fmrilm.artifacts import run_paths
    from fmrilm.evaluation.rest_fewshot import RestFewShotConfig, run_rest_fewshot

    cfg = config_from_args(RestFewShotConfig, args, run_paths(args.run, "rest_fewshot"))
    report = run_rest_fewshot(cfg, overwrite=args.force)
    for name, section in report["phenotypes"].items():
        for k, result in section["k"].items():
            print(f"{name} k={k}: {result.get('mean_accuracy', result.get('reason'))}")
    print(f"report: {cfg.out}/report.md")
    return 0


def answer_question(run_dir, scan_id: str, question: str, max_new_tokens: int = 32, backbone=None) -> dict:
    """Answer `question` about scan `scan_id` of the run in `run_dir` (VQA prompt of the corpus).

    `backbone` re-points a LoRA model at its base checkpoint (:func:`fmrilm.llm.checkpoint.load_brainlm`).
    The run's captioner answers: the model, prompted through its retriever as in training.
    """
    from pathlib import Path

    from fmrilm.artifacts import (
        check_compatible,
        resolve_model_dir,
        resolve_tokenizer_dir,
        run_artifact,
        run_dataset,
    )
    from fmrilm.brain.task_data import TaskData
    from fmrilm.errors import InputError
    from fmrilm.evaluation.task_eval import VQA_PROMPT
    from fmrilm.io import read_json
    from fmrilm.retrieval.captioner import Captioner
    from fmrilm.retrieval.search import parse_scan_id
    from fmrilm.tokenizer.features import encode_betas
    from fmrilm.tokenizer.model import BrainTokenizer

    run = Path(run_dir)
    # the run's own record of its stages (stages.json), not directory names
    tokenizer_dir = resolve_tokenizer_dir(run_artifact(run, "tokenizer"))
    model_dir = resolve_model_dir(run_artifact(run, "instruct"))
    check_compatible(tokenizer_dir, model_dir)
    if backbone is not None and read_json(model_dir / "brainlm.json").get("weights") not in ("adapter", "frozen"):
        raise InputError("--backbone", "weights", f"the model {model_dir} is no LoRA adapter (it holds its whole "
                                                  "backbone): there is no base to re-point")
    data = TaskData(run_dataset(run, "task"))
    subject, stimulus = parse_scan_id(data, scan_id)
    tokenizer = BrainTokenizer.from_pretrained(tokenizer_dir, data.atlas_info)
    captioner = Captioner.load(model_dir, backbone)
    tokens, latents = encode_betas(tokenizer, data.mean_betas(subject, [stimulus]))
    (answer,) = captioner.generate([tokens], [VQA_PROMPT.format(question=question)], max_new_tokens=max_new_tokens,
                                   brain_latents=[latents] if captioner.reads_latents else None)
    return {"subject": data.subjects[subject]["subject"], "stimulus": data.stimuli[stimulus]["key"],
            "question": question, "answer": answer, "reference_captions": data.stimuli[stimulus]["captions"]}


REST_PROMPT = "Resting-state scan: {scans}\n{question}"  # a phrasing of the corpus's phenotype prompts


def answer_rest_question(run_dir, subject: str, question: str, window: int | None = None, max_new_tokens: int = 32,
                         backbone=None) -> dict:
    """Answer `question` about rest subject `subject` (id or row) of the run in `run_dir` from its rest tokens
    (stage ``rest_tokens``): every window of the run, or only `window`; `backbone` as in :func:`answer_question`."""
    from pathlib import Path

    from fmrilm.artifacts import check_compatible, resolve_model_dir, resolve_tokenizer_dir, run_artifact, run_dataset
    from fmrilm.brain.store import Dataset
    from fmrilm.errors import InputError
    from fmrilm.llm.checkpoint import load_brainlm
    from fmrilm.llm.generate import generate

    run = Path(run_dir)
    model_dir = resolve_model_dir(run_artifact(run, "instruct"))
    check_compatible(resolve_tokenizer_dir(run_artifact(run, "tokenizer")), model_dir)
    rest = Dataset(run_dataset(run, "rest"), kind="rest")
    tokens = Dataset(run_artifact(run, "rest_tokens"), kind="tokens").array("tokens")
    rows = rest.table("subjects")
    names = [r["subject"] for r in rows]
    row = names.index(subject) if subject in names else int(subject) if subject.isdigit() else None
    if row is None or not 0 <= row < len(names) or row >= tokens.shape[0]:
        raise InputError(rest.path / "subjects.jsonl", "--rest", f"{subject!r}: no such subject (ids "
                         f"{names[:3]}…, or a row below {len(names)})")
    if window is not None and not 0 <= window < tokens.shape[1]:
        raise InputError(run_artifact(run, "rest_tokens"), "--window", f"{window}: the runs have {tokens.shape[1]} "
                         "windows")
    model = load_brainlm(model_dir, backbone)
    scans = np.asarray(tokens[row]) if window is None else np.asarray(tokens[row, window])[None]
    prompt = REST_PROMPT.format(scans=scan_placeholders(len(scans)), question=question)
    (answer,) = generate(model, [scans], [prompt], max_new_tokens=max_new_tokens)
    return {"subject": names[row], "window": "all" if window is None else window, "windows": len(scans),
            "question": question, "answer": answer,
            "phenotypes": {k: v for k, v in rows[row].items() if k != "subject"}}


def _ask(args) -> int:
    if args.rest is not None:
        result = answer_rest_question(args.run, args.rest, args.question, args.window, args.max_new_tokens,
                                      args.backbone)
        where = f"{result['subject']} (rest, window {result['window']})"
    else:
        result = answer_question(args.run, args.scan, args.question, args.max_new_tokens, args.backbone)
        where = f"{result['subject']}/{result['stimulus']}"
    print(json.dumps(result) if args.json else f"{where}: {result['question']}\n→ {result['answer']}")
    return 0
