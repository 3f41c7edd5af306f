"""Readable evaluation output: ``report.md`` tables beside ``report.json``, and the brain map PNG."""

from __future__ import annotations

import math
from pathlib import Path

from fmrilm.io import atomic_path

CAPTION_COLUMNS = ("semscore", "BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _interval(ci) -> str:
    return "—" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _skipped(section) -> bool:
    return isinstance(section, dict) and section.get("status") == "skipped"


def render_markdown(report: dict) -> str:
    """Markdown tables of every section of a report dict (see :func:`fmrilm.evaluation.runner.run_evaluation`)."""
    out = ["# fmrilm evaluation", "", f"Items: {report['items']}", ""]
    cap = report["captioning"]
    out += ["## Captioning (repeats averaged)", ""]
    out += _table(("condition", *CAPTION_COLUMNS),
                  [(name, *(cap[name].get(c) for c in CAPTION_COLUMNS)) for name in cap["conditions"]])
    out += [f"SPICE: unavailable ({cap['model']['unavailable'].get('SPICE', '')})", ""]
    vqa = report["vqa"]
    types = sorted(vqa["model"]["by_type"])
    out += ["## VQA (exact match)", ""]
    out += _table(("condition", "overall", *types),
                  [(c, vqa[c]["overall"], *(vqa[c]["by_type"][t]["accuracy"] for t in types))
                   for c in ("model", "shuffled", "text_only")])
    ret = report["retrieval"]
    out += [f"## Retrieval ({ret['ridge']['n_way']}-way, {ret['ridge']['n_draws']} draws)", ""]
    out += _table(("head", "brain→caption top1", "top5", "caption→brain top1", "top5"),
                  [(name, ret[name]["brain_to_caption"].get("top1"), ret[name]["brain_to_caption"].get("top5"),
                    ret[name]["caption_to_brain"].get("top1"), ret[name]["caption_to_brain"].get("top5"))
                   for name in ("brain_embedder_tokens", "continuous_tokens", "ridge", "ideal_observer")])
    zs = report["zero_shot"]
    out += ["## Zero-shot naming of novel categories", ""]
    out += (["skipped: " + zs["reason"], ""] if _skipped(zs) else
            _table(("condition", "naming rate", "n"), [(c, zs[c]["fraction"], zs[c]["n"]) for c in zs]))
    fs = report["few_shot"]
    out += ["## Few-shot (in-context captioning SemScore)", ""]
    out += _table(("k", "SemScore"), [(k, v.get("semscore", v.get("reason"))) for k, v in fs["in_context"].items()])
    out += _adaptation_markdown(fs["subject_adaptation"])
    out += _rest_markdown(report["rest"])
    out += ["## Targets", ""]
    out += _table(("target", "measured", "95 % CI (items resampled)", "threshold", "met"),
                  [(name, t["measured"], _interval(t.get("ci95")), t["threshold"], t["met"])
                   for name, t in report["targets"].items()])
    out += ["## Examples", ""]
    for ex in report["examples"]:
        out += [f"- **{ex['subject']} / stim {ex['stimulus']}** reference: {ex['reference']}",
                f"  - generated: {ex['generated']}", f"  - shuffled: {ex['shuffled']}",
                f"  - Q: {ex['question']} A: {ex['answer']} (truth: {ex['truth']})",
                f"  - retrieved captions: {' | '.join(ex['retrieved'])}"]
    out += ["", f"![tokenizer map]({report['brain_map']})", ""]
    return "\n".join(out)


def _adaptation_markdown(section: dict) -> list[str]:
    out = ["## Held-out-subject adaptation (new subject encoders, codebook and LM frozen)", ""]
    if _skipped(section):
        return out + ["skipped: " + section["reason"], ""]
    rows = list(section["conditions"].items())
    n_way = rows[0][1]["n_way"]
    out += [f"Subject {section['subject']}: encoders fitted on k of {section['train_pool']} training-split "
            f"stimuli, scored on {section['test_stimuli']} test stimuli (repeats averaged); "
            f"{n_way}-way retrieval, chance {1 / n_way:.3f}.", ""]
    return out + _table(("condition", "R² vs clean", "R² vs scan", "top1 brain embedder", "top1 read-out",
                         "SemScore"),
                        [(name, c.get("r2_clean"), c["r2"], c.get("top1_brain_embedder"), c.get("top1_readout"),
                          c["semscore"]) for name, c in rows])


def _rest_markdown(rest: dict) -> list[str]:
    out = ["## Rest", ""]
    if _skipped(rest):
        return out + ["skipped: " + rest["reason"], ""]
    rows = []
    for name, result in rest["phenotype"].items():
        key = "mae" if name == "age" else "accuracy"
        rows.append((name, key, result["model"][key], result["fc_baseline"][key], result["n_subjects"]))
    out += _table(("phenotype", "metric", "LM", "FC baseline", "subjects"), rows)
    rows, notes = [], []
    for label, key in (("synthetic held-out subjects", "temporal"), ("real brainspace run", "temporal_real_run")):
        t = rest.get(key)
        if t is None:
            continue
        if _skipped(t):
            notes.append(f"next scan on the {label} skipped: {t['reason']}")
        else:
            rows.append((label, t["model"], t["persistence"], t["linear_ar"], t["tokenizer_ceiling"]))
    if rows:
        out += _table(("next-scan R² (parcels)", "LM", "persistence", "linear AR", "tokenizer ceiling"), rows)
    return out + notes + ([""] if notes else [])


def write_markdown(report: dict, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(render_markdown(report))
    return path
